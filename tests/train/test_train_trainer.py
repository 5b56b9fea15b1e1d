"""Trainer: overfitting a fixed batch, LoRA trains only adapters, resume equivalence, identical data and init for
SFT vs aux-SFT, regulariser hook, schedule and data order."""

from __future__ import annotations

import json

import pytest
import torch

from capvector.errors import CapvectorError
from capvector.policy import TinyVLA, load_policy, save_policy
from capvector.train import (
    SyntheticDemoDataset,
    TrainConfig,
    Trainer,
    global_batch,
    load_trained,
    lr_factor,
    snapshot_dir,
)
from testing_common import small_config


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / name), steps=6, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1,
                progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_policy(path).state_dict()


def test_overfits_a_fixed_batch(tmp_path):
    ds = SyntheticDemoDataset(length=8, chunk=4, seed=5)  # batch 8 = the whole dataset every step
    cfg = _cfg(tmp_path, "overfit", steps=80, lr=3e-3, warmup_steps=5, aux_weight=0.5, aux_layer=1, log_every=5)
    result = Trainer(cfg, ds, policy_config=small_config()).train()
    first, last = result.history[0], result.history[-1]
    assert last["action_l1"] < 0.5 * first["action_l1"]
    assert last["align"] < first["align"]
    lines = (tmp_path / "overfit" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(5, 81, 5))
    resolved = json.loads((tmp_path / "overfit" / "config.json").read_text())
    assert resolved["train"]["aux_weight"] == 0.5 and resolved["aux_layer"] == 1
    # The projector is saved beside the policy, never inside it.
    assert (tmp_path / "overfit" / "aux_projector.safetensors").is_file()
    assert not any("projector" in k for k in _weights(result.policy_dir))


def test_lora_attaches_to_trunk_and_trains_only_adapters(tmp_path, tiny_ds):
    torch.manual_seed(0)
    base = TinyVLA(small_config())
    save_policy(base, tmp_path / "base")
    trainer = Trainer(_cfg(tmp_path, "lora", tuner="lora", lora_r=4, init=str(tmp_path / "base")), tiny_ds)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".vlm.trunk." in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    frozen_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    result = trainer.train()
    for n, p in trainer.model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    assert any(torch.count_nonzero(p) for n, p in trainer.model.named_parameters() if "lora_B" in n)
    # The exported policy is the merged model: only the targeted trunk weight matrices moved.
    before, after = base.state_dict(), _weights(result.policy_dir)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("vlm.trunk.") and k.endswith("_proj.weight") for k in moved)
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()


def test_also_train_unfreezes_named_base_parameters(tmp_path, tiny_ds):
    trainer = Trainer(_cfg(tmp_path, "lora_head", tuner="lora", lora_r=2, also_train=["action_expert.*"]), tiny_ds,
                      policy_config=small_config())
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any(".action_expert." in n for n in trainable) and any("lora_A" in n for n in trainable)


@pytest.mark.parametrize("tuner,aux", [("full", 0.5), ("lora", 0.0)])
def test_resume_continues_identically(tmp_path, tiny_ds, tuner, aux):
    kw = dict(tuner=tuner, aux_weight=aux, aux_layer=1, lora_r=2, checkpoint_every=2)
    straight = Trainer(_cfg(tmp_path, "a", **kw), tiny_ds, policy_config=small_config()).train()
    Trainer(_cfg(tmp_path, "b", **kw), tiny_ds, policy_config=small_config()).train(stop_at=3)
    resumed_trainer = Trainer(_cfg(tmp_path, "b", **kw), tiny_ds, policy_config=small_config())
    resumed = resumed_trainer.train()
    wa, wb = _weights(straight.policy_dir), _weights(resumed.policy_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def curve(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines)]

    assert curve("a") == curve("b") and len(curve("a")) == 6
    with pytest.raises(CapvectorError, match="config differs in \\['lr'\\]"):
        Trainer(_cfg(tmp_path, "b", lr=1.0, **kw), tiny_ds, policy_config=small_config()).train()


def test_sft_and_aux_runs_share_init_and_data(tmp_path, tiny_ds):
    sft = Trainer(_cfg(tmp_path, "sft", tuner="lora", lora_r=2), tiny_ds, policy_config=small_config())
    aux = Trainer(_cfg(tmp_path, "aux", tuner="lora", lora_r=2, aux_weight=0.5), tiny_ds, policy_config=small_config())
    for (n, a), (m, b) in zip(sft.model.state_dict().items(), aux.model.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    assert [b for b in sft._loader(0, 20).batch_sampler] == [b for b in aux._loader(0, 20).batch_sampler]


def test_data_order_is_a_seeded_permutation_per_epoch():
    n, bs = 10, 4
    steps = [global_batch(3, s, n, bs) for s in range(5)]  # 20 indices = two epochs
    flat = [i for b in steps for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]
    assert steps == [global_batch(3, s, n, bs) for s in range(5)]
    assert steps != [global_batch(4, s, n, bs) for s in range(5)]


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_regularizer_hook_adds_to_the_loss(tmp_path, tiny_ds):
    def l2(model):
        return 0.1 * sum((p**2).sum() for p in model.parameters() if p.requires_grad)

    plain = Trainer(_cfg(tmp_path, "plain", steps=4), tiny_ds, policy_config=small_config())
    r0 = plain.train()
    reg = Trainer(_cfg(tmp_path, "reg", steps=4), tiny_ds, policy_config=small_config())
    reg.add_regularizer("l2", lambda: l2(reg.model))
    first_value = float(l2(reg.model).detach())
    r1 = reg.train()
    assert r1.history[0]["reg/l2"] == pytest.approx(first_value, rel=1e-5)
    assert r1.history[0]["loss"] == pytest.approx(r1.history[0]["action_l1"] + first_value, rel=1e-5)
    w0, w1 = _weights(r0.policy_dir), _weights(r1.policy_dir)
    assert sum(v.norm() ** 2 for v in w1.values()) < sum(v.norm() ** 2 for v in w0.values())
    # Given to the constructor (the form the orthogonal regulariser has: no argument).
    r2 = Trainer(_cfg(tmp_path, "reg0", steps=1), tiny_ds, policy_config=small_config(),
                 regularizers={"const": lambda: torch.tensor(0.25)}).train()
    assert r2.history[0]["loss"] == pytest.approx(r2.history[0]["action_l1"] + 0.25, rel=1e-5)


def test_bad_batches_and_configs(tmp_path):
    with pytest.raises(CapvectorError, match="tuner must be one of"):
        TrainConfig(tuner="qlora")
    ds = SyntheticDemoDataset(length=8, chunk=8)  # chunk 8 vs policy chunk 4
    with pytest.raises(CapvectorError, match="prediction shape"):
        Trainer(_cfg(tmp_path, "bad", steps=1), ds, policy_config=small_config()).train()
    with pytest.raises(CapvectorError, match="needs a PEFT config"):
        Trainer(_cfg(tmp_path, "bad2", tuner="peft"), ds, policy_config=small_config())


def test_unmergeable_peft_tuner_exports_base_and_adapter(tmp_path, tiny_ds):
    """Tuner 'peft' with a real PEFT method (IA3 stands in for GSE): base_policy/ + adapter/ reload identically."""
    from peft import IA3Config

    ia3 = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    cfg = _cfg(tmp_path, "ia3", tuner="peft", also_train=["action_expert.head_fc2.*"], lr=1e-2)
    trainer = Trainer(cfg, tiny_ds, policy_config=small_config(), peft_config=ia3)
    result = trainer.train()
    assert result.policy_dir == tmp_path / "ia3" and not (tmp_path / "ia3" / "policy").exists()
    reloaded = load_trained(result.policy_dir)
    s = tiny_ds[3]
    obs = {"image": s["image"].numpy(), "proprio": s["proprio"].numpy(), "instruction": s["instruction"]}
    trainer.model.eval()
    assert (reloaded.act(obs) == trainer.policy.act(obs)).all()
    base = load_policy(tmp_path / "ia3" / "base_policy").state_dict()
    torch.manual_seed(cfg.seed)
    fresh = TinyVLA(small_config()).state_dict()
    assert torch.equal(base["vlm.trunk.layers.0.attn.k_proj.weight"], fresh["vlm.trunk.layers.0.attn.k_proj.weight"])
    assert not torch.equal(base["action_expert.head_fc2.weight"], fresh["action_expert.head_fc2.weight"])
    with pytest.raises(CapvectorError, match="no trained policy"):
        load_trained(tmp_path / "nothing")


def test_action_expert_learning_rate_group(tmp_path, tiny_ds):
    cfg = _cfg(tmp_path, "lrs", steps=3, lr=1e-3, lr_action_expert=1e-2, warmup_steps=0, aux_weight=0.5)
    trainer = Trainer(cfg, tiny_ds, policy_config=small_config())
    trainer.train()
    groups = trainer.optimizer.param_groups
    head = {id(p) for n, p in trainer.model.named_parameters() if n.startswith("action_expert.")}
    assert [len(g["params"]) for g in groups] == [len(trainer.trainable) - len(head), len(head), 6]
    assert all(id(p) in head for p in groups[1]["params"])
    factor = lr_factor(2, 3, 0, cfg.min_lr_ratio)
    assert groups[0]["lr"] == pytest.approx(1e-3 * factor) and groups[1]["lr"] == pytest.approx(1e-2 * factor)


def test_dropout_runs_are_reproducible_and_resumable(tmp_path, tiny_ds):
    kw = dict(steps=4, checkpoint_every=2)
    pc = small_config(dropout=0.2)
    a = Trainer(_cfg(tmp_path, "d1", **kw), tiny_ds, policy_config=pc).train()
    torch.manual_seed(12345)  # whatever the caller's global RNG state, the run is the same
    b = Trainer(_cfg(tmp_path, "d2", **kw), tiny_ds, policy_config=pc).train()
    Trainer(_cfg(tmp_path, "d3", **kw), tiny_ds, policy_config=pc).train(stop_at=2)
    c = Trainer(_cfg(tmp_path, "d3", **kw), tiny_ds, policy_config=pc).train()
    wa, wb, wc = (_weights(r.policy_dir) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("tuner", ["full", "lora"])
def test_snapshots_hold_the_policy_at_their_step(tmp_path, tiny_ds, tuner):
    """A snapshot at step 3 of a 6-step run equals the live policy of the same run stopped after step 3."""
    kw = dict(tuner=tuner, lora_r=2, snapshot_steps=[3])
    Trainer(_cfg(tmp_path, "a", **kw), tiny_ds, policy_config=small_config()).train()
    stopped = Trainer(_cfg(tmp_path, "b", **kw), tiny_ds, policy_config=small_config())
    stopped.train(stop_at=3)
    live = stopped.model.merge_and_unload() if tuner == "lora" else stopped.policy
    snap = load_trained(snapshot_dir(tmp_path / "a", 3)).state_dict()
    assert snap.keys() == live.state_dict().keys()
    assert all(torch.allclose(snap[k], v, atol=1e-6) for k, v in live.state_dict().items())
    key = "vlm.trunk.layers.0.attn.q_proj.weight"
    assert not torch.equal(snap[key], _weights(tmp_path / "a" / "policy")[key])  # training went on after it
    assert sorted(p.name for p in (tmp_path / "a" / "snapshots").iterdir()) == ["step_0000003"]


def test_checkpoints_are_accelerate_states_of_the_trained_tensors(tmp_path, tiny_ds):
    """save_state writes the optimizer and every process's RNG states; weights are the trained (LoRA) tensors only."""
    from safetensors import safe_open

    trainer = Trainer(_cfg(tmp_path, "ck", tuner="lora", lora_r=2, checkpoint_every=2), tiny_ds,
                      policy_config=small_config())
    trainer.train(stop_at=2)
    ckpt = tmp_path / "ck" / "checkpoints" / "step_0000002"
    names = {p.name for p in ckpt.iterdir()}
    assert {"trained.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"} <= names
    assert "model.safetensors" not in names  # accelerate's own full-model file: frozen weights are not repeated
    with safe_open(str(ckpt / "trained.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and all("lora_" in k for k in keys)
    assert keys == {n for n, p in trainer.loss_module.named_parameters() if p.requires_grad}
    (ckpt / "trainable.safetensors").write_bytes(b"")  # what capvector 0.2 wrote: refused with a clear message
    with pytest.raises(CapvectorError, match="older capvector"):
        Trainer(_cfg(tmp_path, "ck", tuner="lora", lora_r=2, checkpoint_every=2), tiny_ds,
                policy_config=small_config()).train()


def test_fsdp_asked_for_but_not_running_is_refused(tmp_path, tiny_ds, monkeypatch):
    """On CPU accelerate quietly runs an FSDP config as DDP / one process: the trainer says so."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(CapvectorError, match="asks for .* but accelerate set up"):
        Trainer(_cfg(tmp_path, "eng", steps=1), tiny_ds, policy_config=small_config())
