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
