"""GSE layer maths against independent computations: known spectra, a per-token per-expert loop, formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from capvector.gse import GSEConfig, GSELinear, rank_split
from capvector.gse.layer import load_balancing_loss


def known_spectrum_linear(m: int, n: int, sigma: torch.Tensor,
                          seed: int) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A Linear whose weight is U·diag(σ)·Vᵀ with U, V drawn here, so the test knows the true SVD."""
    g = torch.Generator().manual_seed(seed)
    k = len(sigma)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    lin = nn.Linear(n, m, bias=True)
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(sigma) @ v.T)
        lin.bias.copy_(torch.randn(m, generator=g))
    return lin, u, v


def random_linear(m: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n, m).to(dtype)


def perturb(layer: GSELinear, seed: int, std: float = 0.05) -> None:
    """Move every trainable adapter tensor away from its init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("gse_") and p.requires_grad:
                p.add_(std * torch.randn(p.shape, generator=g))


def loop_reference(layer: GSELinear, x: torch.Tensor, adapter: str = "default") -> torch.Tensor:
    """y = W·x + b + f_θ(x) − c·f_θ0(x), written token by token and expert by expert (no stacking)."""
    cfg = layer.gse_settings[adapter]
    layer = layer.requires_grad_(False)
    ranks, g, k, c = layer.gse_ranks[adapter], int(cfg["num_generalized"]), int(cfg["top_k"]), cfg["init_coefficient"]
    starts = [sum(ranks[:j]) for j in range(len(ranks))]
    scale = layer.gse_scale[adapter]

    def adapter_out(a, b, router, xt):
        out = torch.zeros(layer.out_features, dtype=torch.float64)
        for j in range(g):
            sl = slice(starts[j], starts[j] + ranks[j])
            s_j = float(scale[starts[j]])
            out += (1.0 / g) * s_j * (b[:, sl] @ (a[sl] @ xt))
        logits = router @ xt
        probs = torch.softmax(logits, dim=0)
        chosen = sorted(range(len(probs)), key=lambda e: -float(probs[e].detach()))[:k]
        denom = sum(float(probs[e]) for e in chosen) if k > 1 else 1.0  # k = 1: raw probability (Switch)
        for e in chosen:
            j = g + e
            sl = slice(starts[j], starts[j] + ranks[j])
            s_j = float(scale[starts[j]])
            out += float(probs[e]) / denom * s_j * (b[:, sl] @ (a[sl] @ xt))
        return out

    base = layer.get_base_layer()
    w, bias = base.weight.double(), base.bias.double()
    rows = []
    for xt in x.reshape(-1, layer.in_features).double():
        y = w @ xt + bias
        y += adapter_out(layer.gse_A[adapter].double(), layer.gse_B[adapter].double(),
                         layer.gse_router[adapter].double(), xt)
        y -= c * adapter_out(layer.gse_A0[adapter].double(), layer.gse_B0[adapter].double(),
                             layer.gse_router0[adapter].double(), xt)
        rows.append(y)
    return torch.stack(rows).reshape(*x.shape[:-1], layer.out_features)


@pytest.mark.parametrize(("m", "n", "r", "e", "g"), [(48, 32, 16, 8, 1), (40, 56, 10, 4, 1), (33, 29, 11, 5, 2),
                                                     (64, 64, 7, 7, 0)])
def test_init_is_exactly_the_base_layer(m: int, n: int, r: int, e: int, g: int) -> None:
    base = random_linear(m, n, seed=m + n)
    x = torch.randn(3, 5, n, generator=torch.Generator().manual_seed(1))
    expected = base(x)
    layer = GSELinear(base, "default", GSEConfig(r=r, num_experts=e, num_generalized_experts=g,
                                                 top_k=min(2, e - g), dropout=0.0))
    assert (layer(x) - expected).abs().max().item() <= 1e-5


def test_init_is_exact_in_training_mode_with_dropout_and_gradient_balancing() -> None:
    base = random_linear(24, 40, seed=3)
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(2))
    expected = base(x)
    layer = GSELinear(base, "default", GSEConfig(r=10, num_experts=4, dropout=0.3, scaling="gradient_balanced"))
    layer.train()
    torch.manual_seed(0)
    assert (layer(x) - expected).abs().max().item() <= 1e-5


def test_rank_split_and_per_expert_scales_when_r_mod_e_is_not_zero() -> None:
    assert rank_split(10, 4) == [3, 3, 2, 2]
    assert rank_split(16, 8) == [2] * 8
    sigma = torch.linspace(10.0, 1.0, 10)  # rank exactly r: the randomised SVD then recovers it exactly
    base, u, v = known_spectrum_linear(30, 20, sigma, seed=0)
    cfg = GSEConfig(r=10, num_experts=4, dropout=0.0, rho=10.0, eta=1.0)
    layer = GSELinear(base, "default", cfg)
    ranks = layer.gse_ranks["default"]
    assert ranks == [3, 3, 2, 2]
    start = 0
    for rj in ranks:
        sl = slice(start, start + rj)
        s_j = math.sqrt(3.0 * 1.0 * 20 / rj)
        assert torch.allclose(layer.gse_scale["default"][sl], torch.full((rj,), s_j))
        # each expert carries exactly 1/ρ of its own contiguous singular block of W
        product = s_j * layer.gse_B["default"][:, sl] @ layer.gse_A["default"][sl]
        block = u[:, sl] @ torch.diag(sigma[sl]) @ v[:, sl].T / 10.0
        assert torch.allclose(product, block, atol=1e-4), (rj, (product - block).abs().max())
        start += rj


def test_gradient_balanced_scales_follow_the_trace_inverse_rule() -> None:
    sigma = torch.tensor([9.0, 8.0, 5.0, 4.0, 3.0, 2.5, 1.0, 0.5])
    base, _, _ = known_spectrum_linear(20, 16, sigma, seed=1)
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, scaling="gradient_balanced",
                                                 scaling_base=2.0, dropout=0.0))
    traces = torch.tensor([5.0 + 4.0, 3.0 + 2.5, 1.0 + 0.5])
    expected = 2.0 * traces.mean() / traces
    got = layer.gse_scale["default"][2::2]
    assert torch.allclose(got, expected, rtol=1e-3)
    assert layer.gse_scale["default"][0].item() == pytest.approx(math.sqrt(3 * 16 / 2))


@pytest.mark.parametrize("top_k", [2, 1])
def test_forward_matches_per_expert_loop_after_training_moves(top_k: int) -> None:
    base = random_linear(36, 28, seed=5)
    layer = GSELinear(base, "default", GSEConfig(r=11, num_experts=5, num_generalized_experts=2, top_k=top_k,
                                                 dropout=0.0, init_coefficient=0.7))
    perturb(layer, seed=9)
    layer.eval()
    x = torch.randn(2, 6, 28, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(layer(x).double(), loop_reference(layer, x), atol=1e-5)


def test_only_adapter_factors_and_router_receive_gradients() -> None:
    base = random_linear(20, 24, seed=6)
    base.requires_grad_(False)
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, dropout=0.0))
    perturb(layer, seed=1)
    x = torch.randn(10, 24, generator=torch.Generator().manual_seed(3))
    layer(x).pow(2).sum().backward()
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"gse_A.default", "gse_B.default", "gse_router.default"}
    for name, p in layer.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert all(not b.requires_grad for b in layer.buffers())


def test_bf16_base_with_fp32_adapter() -> None:
    base = random_linear(32, 48, seed=7, dtype=torch.bfloat16)
    x = torch.randn(4, 48, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    expected = base(x)
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, dropout=0.0))
    assert layer.gse_A["default"].dtype == torch.float32 and layer.gse_router["default"].dtype == torch.float32
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    perturb(layer, seed=2)
    assert not torch.equal(layer(x), expected)


def test_merge_unmerge_generalized_experts() -> None:
    base = random_linear(30, 26, seed=8)
    w0 = base.weight.detach().clone()
    layer = GSELinear(base, "default", GSEConfig(r=9, num_experts=3, dropout=0.0))
    perturb(layer, seed=3)
    layer.eval()
    x = torch.randn(7, 26, generator=torch.Generator().manual_seed(8))
    before = layer(x)
    layer.merge()
    assert layer.merged and not torch.equal(base.weight, w0)
    # generalized ranks are in W now; the routed ones still run: same function
    assert (layer(x) - before).abs().max().item() <= 1e-5
    # the merged delta is exactly the generalized experts' low-rank update
    r_gen = layer.gse_ranks["default"][0]
    s = layer.gse_scale["default"][:r_gen]
    a, b = layer.gse_A["default"][:r_gen], layer.gse_B["default"][:, :r_gen]
    a0, b0 = layer.gse_A0["default"][:r_gen], layer.gse_B0["default"][:, :r_gen]
    assert torch.allclose(base.weight - w0, (b * s) @ a - (b0 * s) @ a0, atol=1e-6)
    layer.unmerge()
    assert not layer.merged
    assert (base.weight - w0).abs().max().item() <= 1e-6
    assert (layer(x) - before).abs().max().item() <= 1e-5


def test_disabled_layer_is_the_base_layer() -> None:
    base = random_linear(16, 16, seed=9)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    expected = base(x)
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, dropout=0.0))
    perturb(layer, seed=4)
    layer.enable_adapters(False)
    assert torch.equal(layer(x), expected)  # W is never modified unless merged: bit-identical
    layer.enable_adapters(True)
    assert not torch.allclose(layer(x), expected)
    layer.merge()
    layer.enable_adapters(False)
    # a disabled forward undoes the merge (as PEFT LoRA does), exact up to fp32 rounding of W + Δ − Δ
    assert (layer(x) - expected).abs().max().item() <= 1e-6
    assert not layer.merged


def test_aux_loss_and_router_stats_match_direct_formulas() -> None:
    base = random_linear(20, 12, seed=10)
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, top_k=2, dropout=0.0))
    perturb(layer, seed=5, std=0.5)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(2))
    layer(x)
    probs = torch.softmax(x @ layer.gse_router["default"].detach().T, dim=-1)
    top = probs.topk(2, dim=-1).indices
    counts = torch.tensor([(top == e).sum().item() for e in range(3)], dtype=torch.float32)
    expected = 3 * sum(counts[e] / 50 * probs[:, e].mean() for e in range(3))
    assert layer.aux_loss("default").item() == pytest.approx(expected.item(), rel=1e-5)
    stats = layer.router_stats("default")
    assert torch.allclose(stats["load"], counts / counts.sum())
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert stats["entropy"].item() == pytest.approx(entropy.item(), rel=1e-5)
    assert layer.aux_loss("default").requires_grad


def test_load_balancing_loss_is_top_k_when_perfectly_balanced() -> None:
    probs = torch.full((6, 3), 1 / 3)
    top_i = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [1, 2], [2, 0]])
    assert load_balancing_loss(probs, top_i).item() == pytest.approx(2.0)


def test_input_gradient_at_init_is_the_base_layers() -> None:
    """The anchor is differentiated too, so at init the layer is the base layer to first order as well."""
    base = random_linear(28, 20, seed=11)
    x = torch.randn(12, 20, generator=torch.Generator().manual_seed(6), requires_grad=True)
    upstream = torch.randn(12, 28, generator=torch.Generator().manual_seed(7))
    (base(x) * upstream).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, dropout=0.0))
    (layer(x) * upstream).sum().backward()
    assert (x.grad - expected).abs().max().item() <= 1e-5


def test_top1_router_learns_from_the_task_loss() -> None:
    """k = 1 gates by the raw probability (Switch), so the task loss alone reaches the router.

    Reference: the router gradient of Σ y·u for one routed expert per token, y_t = p_e(x_t)·s_e·B_e·A_e·x_t
    (+ terms without the router), written per token in float64 and differentiated by autograd.
    """
    base = random_linear(18, 14, seed=12)
    layer = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, num_generalized_experts=1, top_k=1,
                                                 dropout=0.0))
    perturb(layer, seed=7)
    x = torch.randn(9, 14, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(9, 18, generator=torch.Generator().manual_seed(4))
    (layer(x) * upstream).sum().backward()
    got = layer.gse_router["default"].grad

    ranks, scale = layer.gse_ranks["default"], layer.gse_scale["default"].double()
    a, b = layer.gse_A["default"].detach().double(), layer.gse_B["default"].detach().double()
    router = layer.gse_router["default"].detach().double().requires_grad_(True)
    starts = [sum(ranks[:j]) for j in range(len(ranks))]
    total = torch.zeros((), dtype=torch.float64)
    for xt, ut in zip(x.double(), upstream.double(), strict=True):
        probs = torch.softmax(router @ xt, dim=0)
        e = int(torch.argmax(probs))
        sl = slice(starts[1 + e], starts[1 + e] + ranks[1 + e])
        total = total + probs[e] * scale[sl][0] * (ut @ (b[:, sl] @ (a[sl] @ xt)))
    total.backward()
    expected = router.grad
    assert expected.abs().max().item() > 1e-2  # the reference gradient is far from zero
    assert torch.allclose(got.double(), expected, atol=1e-5, rtol=1e-4)


def test_init_weights_false_starts_away_from_the_anchor_and_round_trips_through_the_state() -> None:
    """PEFT's non-identity init (used by its harness): only the trainable factors move, the anchors stay."""
    base = random_linear(24, 20, seed=13)
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    moved = GSELinear(base, "default", GSEConfig(r=8, num_experts=4, dropout=0.0, init_weights=False))
    exact = GSELinear(random_linear(24, 20, seed=13), "default", GSEConfig(r=8, num_experts=4, dropout=0.0))
    assert torch.equal(moved.gse_A0["default"], exact.gse_A0["default"])
    assert not torch.allclose(moved.gse_A["default"], moved.gse_A0["default"])
    assert (moved(x) - base(x)).abs().max().item() > 1e-2
    assert torch.allclose(moved(x).double(), loop_reference(moved, x), atol=1e-5)
    # everything that differs lives in the state dict, so loading it into a default-init layer reproduces it
    exact.load_state_dict(moved.state_dict())
    assert torch.equal(exact(x), moved(x))


def test_keep_mask_dropout_rate_and_values() -> None:
    """The fast adapter dropout keeps 1 − p of the entries (p on a 2^-16 grid) and leaves kept ones as they are."""
    from capvector.gse.layer import keep_mask_dropout

    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 1.0  # no zeros, so zeros in the output are exactly the dropped entries
    out, inv_keep = keep_mask_dropout(x, 0.05)
    kept = out != 0
    rate = kept.float().mean().item()
    assert abs(rate - 0.95) < 5 * math.sqrt(0.05 * 0.95 / x.numel())
    assert inv_keep == pytest.approx(1 / 0.95, abs=1e-5)
    assert torch.equal(out[kept], x[kept])
    same, one = keep_mask_dropout(x, 0.0)
    assert same is x and one == 1.0
