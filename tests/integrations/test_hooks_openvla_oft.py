"""The OpenVLA-OFT patch (docs/patches/openvla-oft-finetune.patch) run on a miniature of `finetune.py`'s loop.

The miniature keeps what the patch touches: the LoRA setup (`LoraConfig` as finetune.py sets it, or the patch's
`GSEConfig` branch), the VLA under DDP (`module.` names; a stand-in, no process group), AdamW over LoRA + action
head, the patch's regulariser construction, `run_forward_pass` (VLA forward → L1 action loss, metrics of floats),
the patch's two lines after it, loss / grad_accumulation_steps, backward and the stepping rule. The model is the
OpenVLA miniature of test_integrations_openvla_oft (Prismatic names, Llama language model) given a forward.
Every `capvector` line the patch adds must appear verbatim in the miniature's source (imports: in this module's),
and each run must end where a plain-torch twin that adds the directly computed terms ends.
"""

from __future__ import annotations

import inspect
from collections import deque
from fnmatch import fnmatchcase
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hook_helpers import direct_gse_aux, direct_orth_lora
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from test_integrations_openvla_oft import TEXT, MiniOpenVLA, MiniOpenVLAConfig
from torch import nn

import capvector
from capvector.integrations import OPENVLA_OFT
from capvector.loss_terms import LossTerms
from capvector.orth import OrthogonalRegularizer

torch.set_num_threads(1)
PATCH = Path(__file__).resolve().parents[2] / "docs" / "patches" / "openvla-oft-finetune.patch"
CHUNK, ACTION_DIM, LLM, STEPS = 2, 7, TEXT["hidden_size"], 3


class MiniOFTVLA(MiniOpenVLA):
    """The OpenVLA miniature with a forward: the language model's hidden states (images are left out)."""

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=True):  # noqa: ANN001, ANN201
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                   output_hidden_states=output_hidden_states)


class DDPStandIn(nn.Module):
    """What DDP(vla) looks like to finetune.py: the model under `.module`, forward passed through."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self.module(*args, **kwargs)


def make_vla(state: dict) -> MiniOFTVLA:
    vla = MiniOFTVLA(MiniOpenVLAConfig(text_config=TEXT, architectures=["OpenVLAForActionPrediction"]))
    vla.load_state_dict(state)
    return vla


def make_batches(steps: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, TEXT["vocab_size"], (2, 6), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
                    "actions": torch.randn(2, CHUNK, ACTION_DIM, generator=gen)})
    return out


def run_forward_pass(vla, action_head, batch):  # noqa: ANN001, ANN201
    output = vla(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 output_hidden_states=True)
    predicted_actions = action_head(output.hidden_states[-1][:, -CHUNK:])
    loss = torch.nn.L1Loss()(batch["actions"], predicted_actions)
    return loss, {"loss_value": loss.item()}


def finetune(cfg, vla, action_head, dataloader):  # noqa: ANN001, ANN201
    """finetune.py's setup and loop with the patch applied (the capvector lines copied from the patch)."""
    lora_config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=min(cfg.lora_rank, 16),
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        init_lora_weights="gaussian",
    )
    if cfg.use_gse:
        from capvector.gse import GSEConfig  # importing registers the "gse" PEFT method

        lora_config = GSEConfig(
            r=cfg.lora_rank, dropout=cfg.lora_dropout, target_modules=OPENVLA_OFT.gse_target_modules
        )
    torch.manual_seed(5)  # LoRA's Gaussian init / GSE's router: the same in the twin
    vla = get_peft_model(vla, lora_config)
    vla = DDPStandIn(vla)
    trainable_params = [param for param in vla.parameters() if param.requires_grad]
    trainable_params += [param for param in action_head.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable_params, lr=cfg.learning_rate)

    orth = None
    if cfg.capvector_vector is not None:
        orth = OrthogonalRegularizer.from_vector(
            vla, cfg.capvector_vector, weight=cfg.capvector_orth_weight, include=OPENVLA_OFT.orth_targets
        )
        orth.expect_updates_by(optimizer)
    capvector_terms = LossTerms(orth)

    recent_metrics = {
        "loss_value": deque(maxlen=cfg.grad_accumulation_steps),
        "orth": deque(maxlen=cfg.grad_accumulation_steps),
        "gse_aux": deque(maxlen=cfg.grad_accumulation_steps),
    }
    logged = []
    vla.train()
    optimizer.zero_grad()
    for batch_idx, batch in enumerate(dataloader):
        loss, metrics = run_forward_pass(vla, action_head, batch)

        loss, capvector_values = capvector_terms.add(loss, vla)
        metrics.update({name: value.item() for name, value in capvector_values.items()})

        normalized_loss = loss / cfg.grad_accumulation_steps
        normalized_loss.backward()
        for metric_name, value in metrics.items():
            if metric_name in recent_metrics:
                recent_metrics[metric_name].append(value)
        logged.append(dict(metrics))
        if (batch_idx + 1) % cfg.grad_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    return vla, logged


def twin(cfg, vla, action_head, dataloader, extra):  # noqa: ANN001, ANN201
    """Plain torch: the same model, init and optimiser; loss + extra(peft model), computed by the test."""
    torch.manual_seed(5)
    if cfg.use_gse:
        from capvector.gse import GSEConfig

        config = GSEConfig(r=cfg.lora_rank, dropout=cfg.lora_dropout, target_modules=OPENVLA_OFT.gse_target_modules)
    else:
        config = LoraConfig(r=cfg.lora_rank, lora_alpha=min(cfg.lora_rank, 16), lora_dropout=cfg.lora_dropout,
                            target_modules="all-linear", init_lora_weights="gaussian")
    model = get_peft_model(vla, config)
    params = [p for p in model.parameters() if p.requires_grad] + list(action_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    values = []
    for batch_idx, batch in enumerate(dataloader):
        loss, _ = run_forward_pass(model, action_head, batch)
        term = extra(model)
        values.append(float(term.detach()))
        ((loss + term) / cfg.grad_accumulation_steps).backward()
        if (batch_idx + 1) % cfg.grad_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    return model, values


@pytest.fixture(scope="module")
def pre_and_vector(tmp_path_factory) -> tuple[dict, Path, dict]:
    """θ_pre's state, a `openvla-oft:vlm` vector from two seeded moves of it, and C = θ_aux − θ_sft (computed here)."""
    tmp = tmp_path_factory.mktemp("oft_hooks")
    torch.manual_seed(0)
    pre = make_vla(MiniOFTVLA(MiniOpenVLAConfig(text_config=TEXT)).state_dict()).state_dict()
    runs = {}
    for role, seed in (("sft", 1), ("aux", 2)):
        gen = torch.Generator().manual_seed(seed)
        runs[role] = {k: (v + 0.05 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in pre.items()}
        (tmp / role).mkdir()
        save_file(runs[role], str(tmp / role / "model.safetensors"))
    capvector.extract(tmp / "sft", tmp / "aux", tmp / "vec", preset="openvla-oft:vlm", progress=False,
                      hash_sources=False)
    return pre, tmp / "vec", {k: runs["aux"][k] - runs["sft"][k] for k in pre}


def cfg(**kw) -> SimpleNamespace:  # noqa: ANN003
    base = dict(lora_rank=8, lora_dropout=0.0, learning_rate=1e-3, grad_accumulation_steps=1, use_gse=False,
                capvector_vector=None, capvector_orth_weight=1e-2)
    return SimpleNamespace(**{**base, **kw})


def head() -> nn.Module:
    torch.manual_seed(7)
    return nn.Linear(LLM, ACTION_DIM)


def test_every_capvector_line_of_the_patch_is_in_the_miniature():
    text = PATCH.read_text()
    assert "--- a/vla-scripts/finetune.py" in text and "+++ b/vla-scripts/finetune.py" in text
    added = [line[1:].strip() for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
    code = [line for line in added if any(s in line for s in ("capvector_terms", "capvector_values", "OrthogonalRegu",
                                                               "expect_updates_by", "GSEConfig", "orth = None",
                                                               "cfg.capvector_vector", "gse_target_modules"))]
    assert len(code) >= 11
    source = {line.strip() for line in inspect.getsource(finetune).splitlines()}
    source |= {line for line in Path(__file__).read_text().splitlines() if line.startswith("from capvector")}
    assert [line for line in code if line not in source] == []


def check_against_twin(c: SimpleNamespace, pre: dict, extra, key: str, atol: float) -> nn.Module:  # noqa: ANN001
    """Run the patched miniature and the twin; the logged values must agree and the trainable tensors end equal
    (with no optimiser step, `grad_accumulation_steps` > steps: their accumulated gradients)."""
    data = make_batches(STEPS)
    vla, logged = finetune(c, make_vla(pre), head(), data)
    model, values = twin(c, make_vla(pre), head(), data, extra)
    assert all(v > 0 for v in values)
    assert [m[key] for m in logged] == pytest.approx(values, rel=1e-4)
    assert all(set(m) == {"loss_value", key} for m in logged)
    trained = dict(vla.module.named_parameters())
    stepped = c.grad_accumulation_steps <= STEPS
    for name, value in model.named_parameters():
        if value.requires_grad:
            got, want = (trained[name], value) if stepped else (trained[name].grad, value.grad)
            torch.testing.assert_close(got, want, rtol=1e-4 if not stepped else 0, atol=atol)
    return vla


def lora_orth(capvec: dict, lam: float):  # noqa: ANN201
    """λ·L_orth of the twin's LoRA A matrices, for the modules the family's globs select."""
    targets = {k.removesuffix(".weight") for k in capvec if any(fnmatchcase(k, g) for g in OPENVLA_OFT.orth_targets)}

    def direct(model: nn.Module) -> torch.Tensor:
        lora_a = {f"{m}.weight": model.get_parameter(f"base_model.model.{m}.lora_A.default.weight") for m in targets}
        return direct_orth_lora(lora_a, capvec, lam, rank=16)

    return direct


@pytest.mark.parametrize("accumulation", [STEPS + 1, 1], ids=["gradients", "adamw-steps"])
def test_orthogonal_regulariser_on_the_lora_a_matrices(pre_and_vector, accumulation):
    pre, vec, capvec = pre_and_vector
    c = cfg(capvector_vector=vec, grad_accumulation_steps=accumulation)
    # AdamW normalises each step, so a subgradient of |x| at x ≈ 0 may differ by ~lr between the two: 1e-4
    vla = check_against_twin(c, pre, lora_orth(capvec, c.capvector_orth_weight), "orth",
                             atol=1e-4 if accumulation == 1 else 1e-6)
    plain, _ = finetune(cfg(grad_accumulation_steps=accumulation), make_vla(pre), head(), make_batches(STEPS))
    a = "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    got, base = vla.module.get_parameter(a), plain.module.get_parameter(a)
    if accumulation > STEPS:
        got, base = got.grad, base.grad
    assert (got - base).abs().max() > 1e-5  # the term changed the update


@pytest.mark.parametrize("accumulation", [STEPS + 1, 1], ids=["gradients", "adamw-steps"])
def test_gse_load_balancing_loss(pre_and_vector, accumulation):
    pre, _, _ = pre_and_vector
    c = cfg(use_gse=True, grad_accumulation_steps=accumulation)
    vla = check_against_twin(c, pre, lambda m: direct_gse_aux(m, weight=0.01), "gse_aux",
                             atol=1e-4 if accumulation == 1 else 1e-6)
    assert any(".gse_router." in n for n, p in vla.named_parameters() if p.requires_grad)
