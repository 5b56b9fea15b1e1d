"""The families' default orthogonal-regulariser selection attaches to exactly the intended weights.

For every miniature: extract a vector with the family's default preset, bind
`OrthogonalRegularizer.from_vector(model, vec, include=family.orth_targets)`, and compare the attached
parameters with a list the test builds from the module tree itself (the backbone layers' attention and
MLP projections; for OpenVLA-OFT every linear layer LoRA adapts). All three forms: after one perturbed step
the exact value equals λ·Σ|C·Δᵀ| computed here from the vector file and the factored one is finite and positive;
on a LoRA-wrapped model the regulariser binds the lora_A of exactly those weights.
"""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from integ_helpers import perturb_, read_all
from safetensors.torch import save_file
from test_integrations_gse import BACKBONE, CASES, LAYER_LINEAR
from torch import nn

import capvector
from capvector.orth import OrthogonalRegularizer

OFT_LINEAR_PREFIXES = ("vision_backbone.", "projector.", "language_model.model.layers.")


def expected_weights(name: str, model: nn.Module) -> set[str]:
    """Weight matrices the regulariser should constrain, from module types and names only."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if name == "openvla-oft":  # LoRA adapts all linear layers of the VLM; lm_head is the output layer
        return {n + ".weight" for n in linears if n.startswith(OFT_LINEAR_PREFIXES)}
    return {n + ".weight" for n in linears if n.startswith(BACKBONE[name]) and LAYER_LINEAR.fullmatch(n)}


def save_state(model: nn.Module, path: Path) -> Path:
    # clone: tied tensors (lm_head / embed_tokens) may not share storage in a safetensors file
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module", params=sorted(CASES))
def family_vector(request, tmp_path_factory):
    """(family name, family, θ_pre model, vector dir): θ_sft and θ_aux are seeded moves of θ_pre."""
    name = request.param
    family, make = CASES[name]
    tmp = tmp_path_factory.mktemp(name.replace("-", "_"))
    torch.manual_seed(0)
    pre = make()
    runs = {}
    for role, seed in (("sft", 1), ("aux", 2)):
        run = make()
        run.load_state_dict(pre.state_dict())
        perturb_(run, seed)
        (tmp / role).mkdir()
        runs[role] = save_state(run, tmp / role / "model.safetensors")
    vec = tmp / "vec"
    capvector.extract(runs["sft"], runs["aux"], vec, preset=family.preset_name(family.default_preset),
                      progress=False, hash_sources=False)
    return name, family, pre, vec


def test_default_selection_attaches_to_exactly_the_expected_weights(family_vector):
    name, family, pre, vec = family_vector
    model = CASES[name][1]()
    model.load_state_dict(pre.state_dict())
    reg = OrthogonalRegularizer.from_vector(model, vec, include=family.orth_targets)
    want = expected_weights(name, model)
    assert want
    assert {t.name for t in reg.terms} == want
    assert all(t.key == t.name for t in reg.terms)  # vector keys are the model's own names
    assert reg.mode == "factored"
    assert float(reg().detach()) == 0.0  # W = W_meta before any step


def test_value_after_one_perturbed_step(family_vector):
    name, family, pre, vec = family_vector
    model = CASES[name][1]()
    model.load_state_dict(pre.state_dict())
    w_meta = {n: p.detach().clone() for n, p in model.named_parameters()}
    lam = 1e-4
    exact = OrthogonalRegularizer.from_vector(model, vec, include=family.orth_targets, mode="exact", weight=lam)
    factored = OrthogonalRegularizer.from_vector(model, vec, include=family.orth_targets, weight=lam)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    tau = read_all(vec)
    params = dict(model.named_parameters())
    ref = lam * sum(float((tau[n].double() @ (params[n].detach().double() - w_meta[n].double()).T).abs().sum())
                    for n in expected_weights(name, model))
    got = float(exact().detach())
    assert got > 0 and torch.isfinite(torch.tensor(got))
    assert got == pytest.approx(ref, rel=1e-5)
    value = factored()
    assert torch.isfinite(value) and float(value.detach()) > 0
    value.backward()  # the loss reaches exactly the regularised weights
    grads = {n for n, p in model.named_parameters() if p.grad is not None and n in expected_weights(name, model)}
    assert grads == expected_weights(name, model)


def test_lora_downstream_uses_the_a_matrices_of_the_default_modules(family_vector):
    """Fine-tuned with LoRA (as OFT is), the regulariser binds the lora_A of exactly the default target modules."""
    name, family, pre, vec = family_vector
    model = CASES[name][1]()
    model.load_state_dict(pre.state_dict())
    want = {w.removesuffix(".weight") for w in expected_weights(name, model)}
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=4, target_modules="all-linear"))
    reg = OrthogonalRegularizer.from_vector(wrapped, vec, include=family.orth_targets)
    assert reg.mode == "lora"
    got = {t.name.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight") for t in reg.terms}
    assert got == want
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_A" in n:
                p.add_(0.01)
    assert torch.isfinite(reg()) and float(reg().detach()) > 0
