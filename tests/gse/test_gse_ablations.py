"""GSE ablation options (init_type, dropout_mask) and thread-count independence, against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
from test_gse_layer import known_spectrum_linear, perturb, random_linear
from torch import nn

import capvector.gse.layer as gse_layer
from capvector.gse import GSEConfig, GSELinear


def trainable_count(layer: nn.Module) -> int:
    """The adapter's trainable parameters (the base Linear is frozen by PEFT, not by the layer)."""
    return sum(p.numel() for name, p in layer.named_parameters() if name.startswith("gse_") and p.requires_grad)


@pytest.mark.parametrize(("m", "n"), [(128, 128), (512, 128), (128, 512)])
def test_svd_init_does_not_depend_on_the_thread_count(m: int, n: int) -> None:
    """In fp32 `svd_lowrank` gave other last bits with 2 threads than with 1, so GSE trainings differed by thread
    count from step 0 (docs/gse.md, Reproducibility); the factors must be bit-identical."""
    base = random_linear(m, n, seed=m + 3 * n)
    threads = torch.get_num_threads()
    factors = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            layer = GSELinear(base, "default", GSEConfig(r=16, num_experts=8))
            factors[t] = (layer.gse_A["default"].detach(), layer.gse_B["default"].detach())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(factors[1][0], factors[2][0]) and torch.equal(factors[1][1], factors[2][1])


def test_mgse_experts_carry_the_minor_singular_blocks() -> None:
    """Full-rank W = U·diag(σ)·Vᵀ with U, V known: expert j of mgse carries 1/ρ of the j-th block of the r smallest."""
    n, r = 20, 8
    sigma = torch.linspace(20.0, 1.0, n)
    base, u, v = known_spectrum_linear(30, n, sigma, seed=4)
    layer = GSELinear(base, "default", GSEConfig(r=r, num_experts=4, dropout=0.0, init_type="mgse"))
    start = n - r  # the r smallest, still in descending order: the generalized expert gets the largest of them
    for rj in layer.gse_ranks["default"]:
        sl, true = slice(start - (n - r), start - (n - r) + rj), slice(start, start + rj)
        s_j = math.sqrt(3.0 * n / rj)
        product = s_j * layer.gse_B["default"][:, sl] @ layer.gse_A["default"][sl]
        block = u[:, true] @ torch.diag(sigma[true]) @ v[:, true].T / 10.0
        assert torch.allclose(product, block, atol=1e-5), (rj, (product - block).abs().max())
        start += rj


def test_lora_init_is_random_a_zero_b_and_leaves_the_weight_alone() -> None:
    base = random_linear(48, 32, seed=5)
    weight = base.weight.detach().clone()
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(0))
    expected = base(x)
    torch.manual_seed(3)
    layer = GSELinear(base, "default", GSEConfig(r=16, num_experts=8, dropout=0.0, init_type="lora"))
    a, b = layer.gse_A["default"], layer.gse_B["default"]
    assert torch.equal(b, torch.zeros_like(b)) and torch.equal(layer.gse_B0["default"], b)
    assert a.abs().max() <= 1 / math.sqrt(32) and a.std() > 0.5 / math.sqrt(3 * 32)  # U(±1/√n): std 1/√(3n)
    assert torch.equal(layer.get_base_layer().weight, weight)
    assert torch.equal(layer(x), expected)  # B = 0: the adapter adds exactly nothing
    assert torch.allclose(layer.gse_scale["default"], torch.full((16,), math.sqrt(3.0 * 32 / 2)))


def test_init_types_share_router_and_trainable_count() -> None:
    """Equal trainable parameters per ablation row, r·(m+n) + (E−G)·n, and the same router from the same seed."""
    layers = {}
    for init in ("svd", "mgse", "lora"):
        torch.manual_seed(11)
        config = GSEConfig(r=8, num_experts=4, init_type=init)
        layers[init] = GSELinear(random_linear(40, 24, seed=1), "default", config)
    counts = {k: trainable_count(v) for k, v in layers.items()}
    assert set(counts.values()) == {8 * (40 + 24) + 3 * 24}
    routers = [v.gse_router["default"] for v in layers.values()]
    assert all(torch.equal(routers[0], rt) for rt in routers[1:])


def expert_reference(layer: GSELinear, x: torch.Tensor, inputs: list[torch.Tensor], inv_keep: float) -> torch.Tensor:
    """y = W·x + b + Σ_j gate_j(x)·s_j·(B_j·A_j − c·B0_j·A0_j)·x̃_j / keep, token by token in fp64: expert j reads
    its own dropped input x̃_j, both routers read the clean x."""
    ranks, g, k = layer.gse_ranks["default"], 1, 2
    starts = [sum(ranks[:j]) for j in range(len(ranks))]
    d = {name: getattr(layer, name)["default"].detach().double() for name in
         ("gse_A", "gse_B", "gse_A0", "gse_B0", "gse_router", "gse_router0", "gse_scale")}
    base = layer.get_base_layer()
    out = []
    for t, xt in enumerate(x.double()):
        y = base.weight.double() @ xt + base.bias.double()
        for a, b, router, sign in ((d["gse_A"], d["gse_B"], d["gse_router"], 1.0),
                                   (d["gse_A0"], d["gse_B0"], d["gse_router0"], -1.0)):
            probs = torch.softmax(router @ xt, dim=0)
            chosen = sorted(range(len(probs)), key=lambda e: -float(probs[e]))[:k]
            gates = {j: 1.0 / g for j in range(g)} | {g + e: float(probs[e]) / sum(float(probs[c]) for c in chosen)
                                                     for e in chosen}
            for j, gate in gates.items():
                sl = slice(starts[j], starts[j] + ranks[j])
                s_j = float(d["gse_scale"][starts[j]]) * inv_keep
                y += sign * gate * s_j * (b[:, sl] @ (a[sl] @ inputs[j][t].double()))
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("mask", ["shared", "per_expert"])
def test_dropout_masks_shared_or_one_per_expert(mask: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = random_linear(24, 40, seed=7)
    layer = GSELinear(base, "default", GSEConfig(r=10, num_experts=4, dropout=0.5, dropout_mask=mask))
    perturb(layer, seed=2)
    layer.train()
    drawn: list[torch.Tensor] = []
    real = gse_layer.keep_mask_dropout

    def recording(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
        dropped, inv_keep = real(x, p)
        drawn.append(dropped != 0)
        return dropped, inv_keep

    monkeypatch.setattr(gse_layer, "keep_mask_dropout", recording)
    x = torch.randn(32, 40, generator=torch.Generator().manual_seed(3)) + 3.0  # no entry is 0 before dropout
    torch.manual_seed(0)
    y = layer(x)
    assert len(drawn) == (4 if mask == "per_expert" else 1)
    masks = drawn if mask == "per_expert" else drawn * 4
    if mask == "per_expert":  # independent masks at p = 0.5 agree on about half the entries, not on all
        agree = [(masks[0] == mk).float().mean().item() for mk in masks[1:]]
        assert all(0.35 < a < 0.65 for a in agree), agree
    expected = expert_reference(layer, x, [x * mk for mk in masks], 65536.0 / round(0.5 * 65536))
    assert torch.allclose(y.double(), expected, atol=1e-4), (y.double() - expected).abs().max()


def test_per_expert_dropout_keeps_the_init_exact() -> None:
    base = random_linear(24, 40, seed=8)
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(2))
    layer = GSELinear(base, "default", GSEConfig(r=10, num_experts=4, dropout=0.3, dropout_mask="per_expert")).train()
    torch.manual_seed(0)
    assert (layer(x) - base(x)).abs().max().item() <= 1e-5


def test_top_singular_is_torch_svd_lowrank_with_the_same_probe() -> None:
    """Same algorithm and random probe as `torch.svd_lowrank` (the reference's call), so the same factors to fp32
    rounding, for tall and wide weights; orthonormal U and V."""
    for m, n in ((96, 40), (40, 96)):
        w = torch.randn(m, n, generator=torch.Generator().manual_seed(m)) * 0.1
        u, s, v = gse_layer.top_singular(w, 8, 2, 42)
        with torch.random.fork_rng():
            torch.manual_seed(42)
            u_ref, s_ref, v_ref = torch.svd_lowrank(w, q=8, niter=2)
        assert torch.allclose(s, s_ref, atol=1e-5)
        assert torch.allclose((u * s) @ v.T, (u_ref * s_ref) @ v_ref.T, atol=1e-5)
        assert torch.allclose(u.T @ u, torch.eye(8), atol=1e-5) and torch.allclose(v.T @ v, torch.eye(8), atol=1e-5)
