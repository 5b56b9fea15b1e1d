"""Exact and factored forms against an independent dense computation; gradients; zero iff orthogonal."""

from __future__ import annotations

import pytest
import torch

from capvector.errors import CapvectorError
from capvector.orth import _TERM_LOSS, OrthogonalRegularizer, abs_sum_outer, canonical_name
from capvector.vectors import CapabilityVector


def _reference(model, vec_dir, w_meta: dict[str, torch.Tensor], weight: float) -> float:
    """λ Σ_params Σ_ij |Σ_l C[i,l] Δ[j,l]| in float64, written from the formula in docs/orthogonal.md."""
    vec = CapabilityVector(vec_dir)
    total = 0.0
    for name, p in model.named_parameters():
        c = vec.dense(name).double()
        d = p.detach().double() - w_meta[name]
        if c.dim() == 1:
            c, d = c[None], d[None]
        total += torch.einsum("il,jl->ij", c, d).abs().sum().item()
    return weight * total


def _step(model, seed: int, scale: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_exact_matches_independent_dense(make_llama, dense_vector):
    model = make_llama(0)
    w_meta = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    reg = OrthogonalRegularizer.from_vector(model, dense_vector, weight=1e-2, mode="exact")
    assert reg().item() == 0.0  # Δ = 0 at the start
    _step(model, 5)
    expected = _reference(model, dense_vector, w_meta, 1e-2)
    assert expected > 0
    assert reg().item() == pytest.approx(expected, rel=1e-5)
    assert sum(v for k, v in reg.breakdown().items() if k.startswith("orth/")) == pytest.approx(expected, rel=1e-5)


def test_factored_equals_exact_at_full_rank_and_approximates_below(make_llama, dense_vector):
    model = make_llama(0)
    exact = OrthogonalRegularizer.from_vector(model, dense_vector, mode="exact")
    full = OrthogonalRegularizer.from_vector(model, dense_vector, mode="factored", rank=10_000)
    low = OrthogonalRegularizer.from_vector(model, dense_vector, mode="factored", rank=2)
    _step(model, 6)
    e, f, lo = exact().item(), full().item(), low().item()
    assert f == pytest.approx(e, rel=1e-4)
    assert 0 < lo < e  # a truncated C loses overlap mass, never adds it here


def test_zero_when_update_orthogonal_positive_otherwise(make_llama, dense_vector):
    model = make_llama(0)
    vec = CapabilityVector(dense_vector)
    name = "model.layers.0.mlp.down_proj.weight"  # C is 16×32: rank ≤ 16 < 32 input dims
    reg = OrthogonalRegularizer.from_vector(model, dense_vector, weight=1.0, mode="exact", include=[name])
    fac = OrthogonalRegularizer.from_vector(model, dense_vector, weight=1.0, mode="factored", include=[name], rank=16)
    assert reg.skipped == []  # deselected parameters are not "missing a vector"
    c = vec.dense(name).double()
    _, _, vh = torch.linalg.svd(c)
    complement = vh[16:]  # rows spanning the orthogonal complement of C's row space
    gen = torch.Generator().manual_seed(0)
    p = dict(model.named_parameters())[name]
    w0 = p.detach().clone()
    coeffs = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        p.copy_(w0 + (coeffs @ complement).float())  # Δ ⟂ C
    orth = (reg().item(), fac().item())
    with torch.no_grad():
        p.copy_(w0 + (coeffs @ vh[:16]).float())  # same-size Δ inside C's row space
    inside = (reg().item(), fac().item())
    assert inside[0] > 1.0 and inside[1] == pytest.approx(inside[0], rel=1e-4)
    assert orth[0] < 1e-5 * inside[0] and orth[1] < 1e-5 * inside[0]  # zero up to fp32 rounding


@pytest.mark.parametrize("mode", ["exact", "factored", "lora"])
def test_gradcheck_float64(mode):
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    w_meta = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(c, full_matrices=False)
    if mode == "exact":
        consts, shape = {"c": c, "w_meta": w_meta}, (5, 7)
    elif mode == "factored":
        consts, shape = {"us": u[:, :3] * s[:3], "v": vh[:3].T, "p": w_meta @ vh[:3].T}, (5, 7)
    else:
        consts, shape = {"a_cap": vh[:3]}, (4, 7)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(w):
        return _TERM_LOSS[mode](consts, w)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 1 << 22])
def test_blockwise_abs_sum_matches_dense_and_gradchecks(block):
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    right = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert abs_sum_outer(left, right, block).item() == pytest.approx((left @ right.T).abs().sum().item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: abs_sum_outer(a, b, block), (left, right), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("grad_of", ["left", "right", "neither"])
@pytest.mark.parametrize("block", [2, 1 << 22])
def test_blockwise_abs_sum_with_one_side_constant_matches_dense_autograd(grad_of, block):
    """The regulariser's usual call: one factor constant (U_k S_k or C), so the value comes from one gradient."""
    gen = torch.Generator().manual_seed(2)
    left = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=grad_of == "left")
    right = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=grad_of == "right")
    value = abs_sum_outer(left, right, block)
    dense = (left.detach() @ right.detach().T).abs().sum()
    assert value.item() == pytest.approx(dense.item(), rel=1e-12)
    if grad_of == "neither":
        assert not value.requires_grad
        return
    x = left if grad_of == "left" else right
    (3.0 * value).backward()
    ref = x.detach().clone().requires_grad_(True)
    (3.0 * ((ref @ right.detach().T) if grad_of == "left" else (left.detach() @ ref.T)).abs().sum()).backward()
    assert torch.allclose(x.grad, ref.grad, rtol=0, atol=1e-12)


def test_canonical_names():
    assert canonical_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert canonical_name("module._orig_mod.model.norm.weight") == "model.norm.weight"


def test_bad_input_is_clear(make_llama, dense_vector, tmp_path):
    model = make_llama(0)
    with pytest.raises(CapvectorError, match="mode"):
        OrthogonalRegularizer.from_vector(model, dense_vector, mode="cosine")
    with pytest.raises(CapvectorError, match="no trainable parameter"):
        OrthogonalRegularizer.from_vector(model, dense_vector, include=["nothing.*"])
    with pytest.raises(CapvectorError, match="not a capability vector"):
        OrthogonalRegularizer.from_vector(model, tmp_path)


def test_skipped_parameters_reported(make_llama, dense_vector, caplog):
    model = make_llama(0)
    model.extra = torch.nn.Linear(3, 3)  # no vector for it
    reg = OrthogonalRegularizer.from_vector(model, dense_vector, mode="factored", include=["*.weight"])
    assert reg.skipped == ["extra.weight", "extra.bias"]
    assert "no vector" in caplog.text


def test_bf16_parameters(make_llama, dense_vector):
    model = make_llama(0).to(torch.bfloat16)
    w_meta = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    reg = OrthogonalRegularizer.from_vector(model, dense_vector, weight=1.0, mode="exact")
    _step(model, 7, scale=0.05)
    value = reg()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_reference(model, dense_vector, w_meta, 1.0), rel=1e-4)
    value.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())
