"""transformers.Trainer integration through OrthogonalLossMixin: the loss includes the regulariser, logs show it."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments

from capvector.orth import OrthogonalLossMixin, OrthogonalRegularizer


class _Ids(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class OrthTrainer(OrthogonalLossMixin, Trainer):
    pass


def _run(make_llama, tmp_path, reg_weight: float | None, vec_dir) -> tuple[Trainer, torch.nn.Module]:
    model = make_llama(0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, logging_steps=1,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = OrthTrainer(model=model, args=args, train_dataset=_Ids())
    if reg_weight is not None:
        trainer.orth_regularizer = OrthogonalRegularizer.from_vector(model, vec_dir, weight=reg_weight, mode="factored")
    trainer.train()
    return trainer, model


def test_trainer_mixin_adds_and_logs(make_llama, dense_vector, tmp_path):
    plain, m0 = _run(make_llama, tmp_path / "a", None, dense_vector)
    orth, m1 = _run(make_llama, tmp_path / "b", 10.0, dense_vector)
    logged = [h for h in orth.state.log_history if "orth" in h]
    assert len(logged) >= 2 and any(h["orth"] > 0 for h in logged)
    assert any(k.startswith("orth/model.layers.*.") for k in logged[-1])
    assert not any("orth" in h for h in plain.state.log_history)
    w0, w1 = m0.model.layers[0].mlp.down_proj.weight, m1.model.layers[0].mlp.down_proj.weight
    assert not torch.allclose(w0, w1)  # the regulariser's gradient changed the update
