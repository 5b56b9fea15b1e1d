"""The downstream CapVector step through `capvector train`: SFT from θ_meta with the orthogonal regulariser built
from the capability vector, logged as reg/orth."""

from __future__ import annotations

import json

import pytest
import torch

import capvector
from capvector.commands.train import train_command
from capvector.policy import TinyVLA, save_policy
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer
from testing_common import small_config


def test_train_command_with_orthogonal_regulariser(tmp_path):
    torch.manual_seed(0)
    save_policy(TinyVLA(small_config()), tmp_path / "pre")
    ds = SyntheticDemoDataset(length=32, chunk=4)
    for name, aux in (("sft", 0.0), ("aux", 0.5)):
        cfg = TrainConfig(output_dir=str(tmp_path / name), steps=3, batch_size=8, lr=3e-3,
                          init=str(tmp_path / "pre"), aux_weight=aux, aux_layer=1, progress=False)
        Trainer(cfg, ds).train()
    capvector.extract(tmp_path / "sft" / "policy", tmp_path / "aux" / "policy", tmp_path / "vec",
                      pretrained=tmp_path / "pre", preset="vlm", progress=False)
    capvector.merge(tmp_path / "pre", [tmp_path / "vec"], tmp_path / "meta", progress=False)
    train_command(output=tmp_path / "down", data="synthetic:32", init=tmp_path / "meta", steps=2, batch_size=8,
                  orth_vector=tmp_path / "vec", orth_weight=1e-4, orth_mode="exact", threads=1)
    last = json.loads((tmp_path / "down" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "reg/orth" in last and last["reg/orth"] > 0.0  # Δ ≠ 0 after the first step, and C ≠ 0
    with pytest.raises(capvector.CapvectorError, match="mode 'nope' unknown"):
        train_command(output=tmp_path / "down2", data="synthetic:32", init=tmp_path / "meta", steps=1, batch_size=8,
                      orth_vector=tmp_path / "vec", orth_mode="nope", threads=1)
