"""lerobot-train hooks on a miniature of LeRobot's training loop (`mini_lerobot_train`, real accelerate and PEFT).

Each run through `LeRobotLossHooks.install` is compared with a plain-torch twin that adds the terms computed
directly (`hook_helpers`): same data, SGD, gradient clipping; the final weights must agree, must differ from a run
without the terms, and the per-step values must be in LeRobot's `output_dict`. The policy's parameter names,
state dict and saved files stay those of the unhooked policy.
"""

from __future__ import annotations

from pathlib import Path

import mini_lerobot_train as lerobot_train
import peft
import pytest
import torch
from hook_helpers import direct_gse_aux, direct_orth_exact
from mini_lerobot_train import MiniPolicy, batches
from peft import PeftType
from safetensors.torch import load_file, load_model, save_file, save_model

import capvector
from capvector.errors import CapvectorError
from capvector.gse import GSEConfig
from capvector.integrations.lerobot_hooks import LeRobotLossHooks, attach_loss_terms, policy_module
from capvector.loss_terms import LossTerms

torch.set_num_threads(1)
LAM, STEPS, CLIP, LR = 1.0, 4, 1.0, 0.05
TARGETS = ("model.encoder.weight", "model.mid.weight")
GSE = dict(r=4, num_experts=4, num_generalized_experts=1, top_k=2, dropout=0.0, aux_loss_weight=0.5,
           target_modules=["encoder", "mid"])


def fresh(state: dict[str, torch.Tensor]) -> MiniPolicy:
    policy = MiniPolicy()
    policy.load_state_dict(state)
    return policy


@pytest.fixture(scope="module")
def pre_and_vector(tmp_path_factory) -> tuple[dict, Path, dict]:
    """θ_pre's state, a dense vector from two seeded moves of it, and C = θ_aux − θ_sft computed here."""
    tmp = tmp_path_factory.mktemp("lerobot_hooks")
    torch.manual_seed(0)
    pre = MiniPolicy().state_dict()
    runs = {}
    for role, seed in (("sft", 1), ("aux", 2)):
        gen = torch.Generator().manual_seed(seed)
        runs[role] = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in pre.items()}
        (tmp / role).mkdir()
        save_file(runs[role], str(tmp / role / "model.safetensors"))
    capvector.extract(tmp / "sft", tmp / "aux", tmp / "vec", progress=False,
                      hash_sources=False)
    return pre, tmp / "vec", {k: runs["aux"][k] - runs["sft"][k] for k in TARGETS}


@pytest.fixture
def hooked(monkeypatch):
    """The miniature module, restored after the test (install replaces its update_policy)."""
    monkeypatch.setattr(lerobot_train, "update_policy", lerobot_train.update_policy)
    return lerobot_train


def twin_run(policy: torch.nn.Module, data: list[dict], extra) -> tuple[list[float], torch.nn.Module]:
    """Plain torch: loss = forward + extra(policy), backward, clip, SGD; returns the extra values per step."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    values = []
    for batch in data:
        loss, _ = policy(batch)
        term = extra(policy)
        values.append(float(term.detach()))
        (loss + term).backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad()
    return values, policy


def test_orthogonal_term_reaches_the_weights_and_the_logs(hooked, pre_and_vector):
    pre, vec, capvec = pre_and_vector
    data = batches(STEPS)
    hooks = LeRobotLossHooks(vec, weight=LAM, mode="exact", include=list(TARGETS))
    hooks.install(hooked)
    policy, outputs = hooked.train(fresh(pre), data, lr=LR, grad_clip_norm=CLIP)

    w_meta = {k: pre[k] for k in TARGETS}
    values, twin = twin_run(fresh(pre), data, lambda m: direct_orth_exact(
        {k: m.get_parameter(k) for k in TARGETS}, w_meta, capvec, LAM))
    assert values[0] == 0.0 and values[-1] > 1e-4  # W = W_meta at the first step, then the term grows
    assert [out["orth"] for out in outputs] == pytest.approx(values, rel=1e-5, abs=1e-7)
    assert all("mse" in out for out in outputs)  # the policy's own logs are kept
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(policy.state_dict()[name], value, rtol=0, atol=1e-6)
    assert policy.updates == STEPS  # update() still reached through accelerate's unwrap


def test_orthogonal_term_changes_training(hooked, pre_and_vector, monkeypatch):
    pre, vec, _ = pre_and_vector
    data = batches(STEPS)
    plain, plain_out = hooked.train(fresh(pre), data, lr=LR, grad_clip_norm=CLIP)
    LeRobotLossHooks(vec, weight=LAM, mode="exact", include=list(TARGETS)).install(hooked)
    policy, _ = hooked.train(fresh(pre), data, lr=LR, grad_clip_norm=CLIP)
    assert all("orth" not in out for out in plain_out)
    assert (policy.model.mid.weight - plain.model.mid.weight).abs().max() > 1e-5


def test_hook_leaves_names_state_dict_and_saved_file_alone(hooked, pre_and_vector, tmp_path):
    pre, vec, _ = pre_and_vector
    hooks = LeRobotLossHooks(vec, weight=LAM, mode="exact", include=list(TARGETS))
    hooks.install(hooked)
    policy, _ = hooked.train(fresh(pre), batches(2))
    assert type(policy) is MiniPolicy
    assert list(policy.state_dict()) == list(MiniPolicy().state_dict())
    assert [n for n, _ in policy.named_parameters()] == [n for n, _ in MiniPolicy().named_parameters()]
    save_model(policy, str(tmp_path / "model.safetensors"))  # LeRobot's save_pretrained writes the policy so
    back = MiniPolicy()
    load_model(back, str(tmp_path / "model.safetensors"))  # ... and loads it strictly
    for name, value in policy.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)
    hooks.handle.remove()
    loss, out = policy(batches(1)[0])
    assert "orth" not in out


def test_evaluation_forward_and_sample_weighting(pre_and_vector):
    pre, vec, _ = pre_and_vector
    from capvector.orth import OrthogonalRegularizer

    policy = fresh(pre)
    reg = OrthogonalRegularizer.from_vector(policy, vec, weight=LAM, mode="exact", include=list(TARGETS))
    with torch.no_grad():
        policy.model.mid.weight.add_(0.1)  # move away from W_meta so the term is not 0
    attach_loss_terms(policy, LossTerms(reg))
    batch = batches(1)[0]
    plain = MiniPolicy.forward(policy, batch, reduction="none")[0]
    per_sample, out = policy(batch, reduction="none")  # LeRobot's sample-weighting call
    assert out["orth"] > 0
    torch.testing.assert_close(per_sample - plain, torch.full_like(plain, out["orth"]), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # LeRobot's forward runs under accelerator.autocast()
        _, out_bf16 = policy(batch)
    assert out_bf16["orth"] == pytest.approx(out["orth"], rel=1e-6)  # the term stays fp32
    policy.eval()
    loss, out = policy(batch)
    assert "orth" not in out and torch.equal(loss, MiniPolicy.forward(policy, batch)[0])
    policy.train()
    with torch.no_grad():
        assert "orth" not in policy(batch)[1]


def test_gse_load_balancing_loss_under_peft(hooked, pre_and_vector, tmp_path):
    """`--peft.method_type=gse`: LeRobot builds the config from PEFT's registry and wraps with get_peft_model;
    without the hook the aux loss would be dropped."""
    pre, _, _ = pre_and_vector
    config_cls = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType["GSE"]]  # as LeRobot's _build_peft_config
    assert config_cls is GSEConfig

    def wrapped() -> peft.PeftModel:
        policy = fresh(pre)
        policy.requires_grad_(False)  # wrap_with_peft freezes the policy first
        torch.manual_seed(3)  # the router's initialisation
        return peft.get_peft_model(policy, config_cls(**GSE))

    data = batches(STEPS)
    original = hooked.update_policy
    LeRobotLossHooks().install(hooked)
    model, outputs = hooked.train(wrapped(), data, lr=LR, grad_clip_norm=CLIP)
    values, twin = twin_run(wrapped(), data, lambda m: direct_gse_aux(m, GSE["aux_loss_weight"]))
    assert [out["gse_aux"] for out in outputs] == pytest.approx(values, rel=1e-5)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(".gse_router." in n for n in trained)
    for name, value in twin.named_parameters():
        torch.testing.assert_close(trained.get(name, value), value, rtol=0, atol=1e-6)
    assert model.base_model.model.updates == STEPS

    with pytest.raises(CapvectorError, match="another policy"):
        hooked.train(wrapped(), data[:1])
    hooked.update_policy = original  # the unhooked loop (the fixture restores it anyway)
    no_aux, _ = hooked.train(wrapped(), data, lr=LR, grad_clip_norm=CLIP)
    routers = [n for n in trained if ".gse_router." in n]
    assert max(float((no_aux.get_parameter(n) - trained[n]).detach().abs().max()) for n in routers) > 1e-6

    model.save_pretrained(tmp_path / "hooked")
    no_aux.save_pretrained(tmp_path / "plain")
    keys = [sorted(load_file(tmp_path / d / "adapter_model.safetensors")) for d in ("hooked", "plain")]
    assert keys[0] == keys[1]


def test_errors(hooked, pre_and_vector):
    with pytest.raises(CapvectorError, match="nothing to add"):
        attach_loss_terms(MiniPolicy(), LossTerms())
    LeRobotLossHooks().install(hooked)
    with pytest.raises(CapvectorError, match="already carries"):
        LeRobotLossHooks().install(hooked)
    with pytest.raises(CapvectorError, match="no update_policy"):
        LeRobotLossHooks().install(torch)  # any module without one
    with pytest.raises(CapvectorError, match="nothing to add"):
        hooked.train(MiniPolicy(), batches(1))  # no vector and no GSE adapter: refused at the first step

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).sum()

    bare = peft.get_peft_model(Bare(), GSEConfig(r=2, num_experts=2, top_k=1, target_modules=["lin"]))
    attach_loss_terms(bare, LossTerms())
    with pytest.raises(CapvectorError, match=r"returned Tensor; expected LeRobot's \(loss tensor, output_dict\)"):
        bare(torch.ones(3, 2))


def test_policy_module_unwraps_engines_and_peft():
    policy = MiniPolicy()
    model = peft.get_peft_model(policy, GSEConfig(**GSE))

    class Wrapper(torch.nn.Module):  # DDP / accelerate shape: the model under `.module`
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    assert policy_module(Wrapper(model)) is policy
    assert policy_module(policy) is policy
