"""The regulariser as `capvector.train.Trainer`'s extra-loss callable on the tiny VLA: full and LoRA tuners."""

from __future__ import annotations

import pytest
import torch

import capvector
from capvector.orth import OrthogonalRegularizer
from capvector.policy import PolicyConfig, TinyVLA, save_policy
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer


@pytest.fixture(scope="module")
def vla_vector(tmp_path_factory):
    root = tmp_path_factory.mktemp("vla")
    torch.manual_seed(0)
    config = PolicyConfig(width=32, depth=2, heads=2, embedder="hash", chunk=4)
    base = TinyVLA(config)
    for name, seed in (("sft", 1), ("aux", 2)):
        gen = torch.Generator().manual_seed(seed)
        model = TinyVLA(config)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        save_policy(model, root / name)
    save_policy(base, root / "pre")
    capvector.extract(root / "sft", root / "aux", root / "vec", progress=False)
    return root


@pytest.mark.parametrize(("tuner", "mode"), [("full", "factored"), ("lora", "lora"), ("lora", "auto")])
def test_reg_is_a_trainer_regularizer(vla_vector, tmp_path, tuner, mode):
    cfg = TrainConfig(output_dir=str(tmp_path / tuner), steps=3, batch_size=8, lr=3e-3, init=str(vla_vector / "pre"),
                      tuner=tuner, lora_r=4, progress=False, log_every=1, threads=1)
    trainer = Trainer(cfg, SyntheticDemoDataset(length=16, chunk=4))
    reg = OrthogonalRegularizer.from_vector(trainer.model, vla_vector / "vec", weight=1.0, mode=mode, rank=4)
    trainer.add_regularizer("orth", reg)
    result = trainer.train()
    assert reg.mode == ("lora" if tuner == "lora" else "factored")
    assert reg.terms and all(h["reg/orth"] >= 0 for h in result.history)
    assert result.history[-1]["reg/orth"] > 0
