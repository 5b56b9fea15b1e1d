"""The tiny pi0 through the one trainer: `capvector train --policy tiny-pi0`, resume equivalence (the flow noise
and times come from the checkpointed RNG), LoRA + spatial alignment, and the CapVector steps (extract with the
`tiny-pi0:` presets, merge, orthogonal regulariser) on it."""

from __future__ import annotations

import json

import pytest
import torch

import capvector
from capvector.commands.train import train_command
from capvector.errors import CapvectorError
from capvector.policy import Pi0Config, TinyPi0, load_policy, save_policy
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer, load_trained
from capvector.vectors.format import CapabilityVector


def _pcfg() -> Pi0Config:
    return Pi0Config(width=32, depth=2, heads=2, embedder="hash", chunk=4, expert_width=16, expert_depth=2)


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(output_dir=str(tmp_path / name), steps=4, batch_size=8, lr=3e-3, warmup_steps=1,
                                 log_every=1, progress=False, seed=7), **kw})


def test_train_command_trains_a_fresh_tiny_pi0(tmp_path):
    train_command(output=tmp_path / "run", data="synthetic:32", policy="tiny-pi0", width=32, depth=2,
                  embedder="hash", steps=3, batch_size=8, threads=1)
    policy = load_trained(tmp_path / "run")
    assert isinstance(policy, TinyPi0) and policy.config.width == 32 and policy.config.heads == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "flow_mse" in records[-1] and "action_l1" not in records[-1]
    assert records[-1]["loss"] == pytest.approx(records[-1]["flow_mse"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["policy"]["policy_type"] == "tiny-pi0"
    with pytest.raises(CapvectorError, match="unknown policy type 'tiny-nope'"):
        train_command(output=tmp_path / "bad", data="synthetic:32", policy="tiny-nope", steps=1, threads=1)


def test_resume_continues_identically(tmp_path, tiny_ds):
    kw = dict(checkpoint_every=2)
    straight = Trainer(_cfg(tmp_path, "a", **kw), tiny_ds, policy_config=_pcfg()).train()
    Trainer(_cfg(tmp_path, "b", **kw), tiny_ds, policy_config=_pcfg()).train(stop_at=2)
    resumed = Trainer(_cfg(tmp_path, "b", **kw), tiny_ds, policy_config=_pcfg()).train()
    wa, wb = load_policy(straight.policy_dir).state_dict(), load_policy(resumed.policy_dir).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_with_spatial_alignment_and_the_subgoal_refusal(tmp_path, tiny_ds):
    trainer = Trainer(_cfg(tmp_path, "lora", tuner="lora", lora_r=2, aux_weight=0.5, aux_layer=1, steps=2), tiny_ds,
                      policy_config=_pcfg())
    adapted = {n.split(".lora_A")[0] for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_A" in n}
    assert any(".vlm.trunk." in n for n in adapted) and any(".action_expert.layers." in n for n in adapted)
    result = trainer.train()
    assert "align" in result.history[-1]
    assert isinstance(load_trained(result.policy_dir), TinyPi0)
    with pytest.raises(CapvectorError, match="supervises the queries tokens, which a tiny-pi0 policy does not have"):
        Trainer(_cfg(tmp_path, "sub", aux_weight=0.5, teacher="subgoal"), tiny_ds, policy_config=_pcfg())


def test_extract_merge_and_orth_with_tiny_pi0_presets(tmp_path):
    torch.manual_seed(0)
    save_policy(TinyPi0(_pcfg()), tmp_path / "pre")
    ds = SyntheticDemoDataset(length=32, chunk=4)
    for name, aux in (("sft", 0.0), ("aux", 0.5)):
        Trainer(_cfg(tmp_path, name, init=str(tmp_path / "pre"), aux_weight=aux, aux_layer=1, steps=3), ds).train()
    capvector.extract(tmp_path / "sft" / "policy", tmp_path / "aux" / "policy", tmp_path / "vec",
                      pretrained=tmp_path / "pre", preset="tiny-pi0:vlm", progress=False)
    names = set(CapabilityVector(tmp_path / "vec").names())
    assert names and all(n.startswith("vlm.") for n in names)
    capvector.merge(tmp_path / "pre", [tmp_path / "vec"], tmp_path / "meta", progress=False)
    pre, meta = load_policy(tmp_path / "pre").state_dict(), load_policy(tmp_path / "meta").state_dict()
    sft, aux = (load_policy(tmp_path / name / "policy").state_dict() for name in ("sft", "aux"))
    for k in pre:  # θ_meta = θ_pre + (θ_aux − θ_sft) on the VLM, θ_pre elsewhere
        want = pre[k] + (aux[k] - sft[k]) if k.startswith("vlm.") else pre[k]
        torch.testing.assert_close(meta[k], want, rtol=0, atol=1e-6)
    train_command(output=tmp_path / "down", data="synthetic:32", init=tmp_path / "meta", steps=2, batch_size=8,
                  orth_vector=tmp_path / "vec", orth_weight=1e-4, orth_mode="exact", threads=1)
    last = json.loads((tmp_path / "down" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["reg/orth"] > 0.0 and "flow_mse" in last
