"""GSE through the trainer (runs once `capvector.gse` exists): adapters attach to the trunk only, base weights stay
frozen, the tuner's aux loss is logged, and the exported base + adapter reload to the same actions."""

from __future__ import annotations

import torch

from capvector.policy import TinyVLA
from capvector.train import TrainConfig, Trainer, load_trained
from testing_common import small_config


def test_gse_attaches_to_trunk_and_trains_only_adapters(tmp_path, tiny_ds):
    cfg = TrainConfig(output_dir=str(tmp_path / "gse"), steps=3, batch_size=8, lr=3e-3, warmup_steps=0,
                      log_every=1, progress=False, tuner="gse")
    trainer = Trainer(cfg, tiny_ds, policy_config=small_config())
    base_names = set(TinyVLA(small_config()).state_dict())
    trainable = [n for n, _ in trainer.trainable]
    assert trainable and all(".vlm.trunk." in n for n in trainable)
    assert not any(n.removeprefix("base_model.model.") in base_names for n in trainable)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    result = trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    assert "tuner_aux" in result.history[-1]
    s = tiny_ds[1]
    obs = {"image": s["image"].numpy(), "proprio": s["proprio"].numpy(), "instruction": s["instruction"]}
    trainer.model.eval()
    assert (load_trained(result.policy_dir).act(obs) == trainer.policy.act(obs)).all()


def test_every_shipped_ablation_row_trains_with_the_arm_s_parameters_but_for_the_router(tmp_path, tiny_ds):
    """Each gse_sweep row of configs/gse_ablation.json trains through the trainer as the pipeline runs it (total
    rank 16 split over the row's experts). The factors' size is r·(d_in + d_out) per layer whatever the split, the
    router's is (E − G)·d_in: so rows with the arm's 7 routed experts count the same, and 3 routed (E=4) lose four
    times what 6 (G=2) lose."""
    import json
    from pathlib import Path

    from capvector.pipeline import PipelineConfig
    from capvector.pipeline.config import gse_row_name

    cfg = PipelineConfig.from_file(Path(__file__).resolve().parents[2] / "configs" / "gse_ablation.json")
    counts = {}
    for i, row in enumerate(({}, *cfg.gse_sweep)):
        train = TrainConfig(output_dir=str(tmp_path / str(i)), steps=2, batch_size=8, lr=3e-3, warmup_steps=0,
                            log_every=1, progress=False, tuner="gse", gse_options={"r": cfg.gse_r, **row})
        result = Trainer(train, tiny_ds, policy_config=small_config()).train()
        assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss)), row
        counts[gse_row_name(row)] = json.loads((tmp_path / str(i) / "config.json").read_text())["trainable_parameters"]
    arm = counts.pop("")
    fewer_experts, more_generalized = counts.pop("num_experts=4") - arm, counts.pop("num_generalized_experts=2") - arm
    assert more_generalized < 0 and fewer_experts == 4 * more_generalized
    assert counts == dict.fromkeys(["init_type=mgse", "init_type=lora", "dropout_mask=per_expert", "top_k=1",
                                    "aux_loss_weight=0", "aux_loss_weight=0.001"], arm)
