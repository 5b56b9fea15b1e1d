"""`LossTermsMixin` on a real `transformers.Trainer` with a tiny random Llama (CPU, a few steps).

Two runs from the same start differ only in the hook (`orth_regularizer` set or not; `gse_aux` on or off). With
SGD, no clipping, no weight decay and one optimiser step of two accumulated micro-batches, their weights must differ
by exactly −lr·∇(term at the start), the gradient computed here from the directly written term; so the term is
added once per optimiser step (not once per micro-batch), and the logged value is the directly computed one.
"""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from hook_helpers import direct_gse_aux, direct_orth_lora
from transformers import Trainer, TrainingArguments

import capvector
from capvector.gse import GSEConfig
from capvector.integrations.hf_trainer import LossTermsMixin
from capvector.orth import OrthogonalLossMixin, OrthogonalRegularizer
from testing_common import SMALL_LLAMA, tiny_llama

torch.set_num_threads(1)
LR, LAM, AUX = 0.5, 0.1, 0.5
IDS = torch.randint(0, SMALL_LLAMA["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))


class HookedTrainer(LossTermsMixin, Trainer):
    pass


class _Same(torch.utils.data.Dataset):
    """Eight copies of one sequence: every micro-batch is the same, so the term's value is too."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": IDS[0], "labels": IDS[0]}


def train(model: torch.nn.Module, out: Path, **hook) -> HookedTrainer:  # noqa: ANN003
    args = TrainingArguments(output_dir=str(out), max_steps=1, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, optim="sgd", learning_rate=LR, weight_decay=0.0,
                             lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, report_to=[],
                             save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = HookedTrainer(model=model, args=args, train_dataset=_Same())
    for name, value in hook.items():
        setattr(trainer, name, value)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def vector(tmp_path_factory) -> tuple[Path, dict]:
    """A dense vector over the tiny Llama and C = θ_aux − θ_sft computed here."""
    root = tmp_path_factory.mktemp("hf_hooks")
    states = {}
    for role, seed in (("sft", 1), ("aux", 2)):
        model = tiny_llama(0, **SMALL_LLAMA)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / role)
        states[role] = {k: v.clone() for k, v in model.state_dict().items()}
    capvector.extract(root / "sft", root / "aux", root / "vec", progress=False, hash_sources=False)
    return root / "vec", {k: states["aux"][k] - states["sft"][k] for k in states["sft"]}


def lora_model() -> peft.PeftModel:
    base = tiny_llama(0, **SMALL_LLAMA)
    torch.manual_seed(1)
    return peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def gse_model() -> peft.PeftModel:
    base = tiny_llama(0, **SMALL_LLAMA)
    torch.manual_seed(1)
    return peft.get_peft_model(base, GSEConfig(r=4, num_experts=4, top_k=2, dropout=0.0, aux_loss_weight=AUX,
                                               target_modules=["q_proj", "v_proj", "down_proj"]))


def moved(a: torch.nn.Module, b: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: (a.get_parameter(n) - b.get_parameter(n)).detach() for n in names}


@pytest.mark.parametrize("normalised", [True, False], ids=["model-normalises", "trainer-divides"])
def test_orthogonal_term_once_per_optimiser_step_and_logged(vector, tmp_path, normalised):
    """Trainer divides the loss by the accumulation steps unless the model normalised it over the accumulated
    batch (`model_accepts_loss_kwargs`, as Llama does): the term must count once per step either way."""
    vec, capvec = vector
    lora_a = lambda m: [n for n, _ in m.named_parameters() if ".lora_A." in n]  # noqa: E731

    start = lora_model()
    names = lora_a(start)
    ref = direct_orth_lora({n.removeprefix("base_model.model.").replace(".lora_A.default", ""): start.get_parameter(n)
                            for n in names}, capvec, LAM, rank=16)
    ref.backward()
    want = {n: -LR * start.get_parameter(n).grad for n in names}

    plain = lora_model()
    train(plain, tmp_path / "plain", model_accepts_loss_kwargs=normalised)
    hooked = lora_model()
    reg = OrthogonalRegularizer.from_vector(hooked, vec, weight=LAM)
    assert reg.mode == "lora" and len(reg.terms) == len(names)
    trainer = train(hooked, tmp_path / "hooked", orth_regularizer=reg, model_accepts_loss_kwargs=normalised)
    for name, delta in moved(hooked, plain, names).items():
        torch.testing.assert_close(delta, want[name], rtol=1e-4, atol=1e-6)
    logged = [h for h in trainer.state.log_history if "orth" in h]
    assert len(logged) == 1 and logged[0]["orth"] == pytest.approx(float(ref.detach()), rel=1e-5)
    assert any(k.startswith("orth/") for k in logged[0])
    assert "gse_aux" not in logged[0]


def test_gse_load_balancing_loss_once_per_optimiser_step_and_logged(tmp_path):
    start = gse_model()
    start.train()
    start(input_ids=IDS.repeat(4, 1), labels=IDS.repeat(4, 1))
    ref = direct_gse_aux(start, AUX)
    ref.backward()
    routers = [n for n, _ in start.named_parameters() if ".gse_router." in n]
    assert routers
    want = {n: -LR * start.get_parameter(n).grad for n in routers}

    plain = gse_model()
    plain_trainer = train(plain, tmp_path / "plain", gse_aux=False)
    hooked = gse_model()
    trainer = train(hooked, tmp_path / "hooked")
    for name, delta in moved(hooked, plain, routers).items():
        torch.testing.assert_close(delta, want[name], rtol=1e-4, atol=1e-6)
    logged = [h for h in trainer.state.log_history if "gse_aux" in h]
    assert len(logged) == 1 and logged[0]["gse_aux"] == pytest.approx(float(ref.detach()), rel=1e-5)
    assert not any("gse_aux" in h for h in plain_trainer.state.log_history)


def test_former_name_is_the_same_mixin():
    assert OrthogonalLossMixin is LossTermsMixin
