"""The trainer's outputs feed capability-vector extraction and merging: θ_meta = θ_pre + (θ_aux − θ_sft) on the
'vlm' preset, and the merged directory loads back as a policy."""

from __future__ import annotations

import torch

import capvector
from capvector.policy import TinyVLA, load_policy, save_policy
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer
from testing_common import small_config


def test_sft_aux_extract_merge_round_trip(tmp_path):
    torch.manual_seed(0)
    save_policy(TinyVLA(small_config()), tmp_path / "pre")
    ds = SyntheticDemoDataset(length=32, chunk=4)
    for name, aux in (("sft", 0.0), ("aux", 0.5)):
        cfg = TrainConfig(output_dir=str(tmp_path / name), steps=3, batch_size=8, lr=3e-3, init=str(tmp_path / "pre"),
                          aux_weight=aux, aux_layer=1, progress=False)
        Trainer(cfg, ds).train()
    capvector.extract(tmp_path / "sft" / "policy", tmp_path / "aux" / "policy", tmp_path / "vec",
                      pretrained=tmp_path / "pre", preset="vlm", progress=False)
    capvector.merge(tmp_path / "pre", [tmp_path / "vec"], tmp_path / "meta", progress=False)
    pre, sft, aux = (load_policy(tmp_path / p).state_dict() for p in ("pre", "sft/policy", "aux/policy"))
    meta = load_policy(tmp_path / "meta").state_dict()
    moved = 0
    for k, v in meta.items():
        want = pre[k] + (aux[k] - sft[k]) if k.startswith("vlm.") else pre[k]
        torch.testing.assert_close(v, want, atol=1e-6, rtol=0)
        moved += int(not torch.equal(v, pre[k]))
    assert moved > 0
