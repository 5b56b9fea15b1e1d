"""Blocked chunk arithmetic (two threads, cache-sized blocks) against the direct whole-tensor torch formula."""

from __future__ import annotations

import pytest
import torch

from capvector.vectors.blocks import BLOCK, BlockRunner, difference_into, weighted_sum_into

SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 2 * BLOCK + 5, 5 * BLOCK + 3]


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize(("x_dtype", "v_dtypes", "out_dtype"), [
    (torch.bfloat16, [torch.float32], torch.bfloat16),
    (torch.bfloat16, [torch.float32, torch.bfloat16], torch.float32),
    (torch.float16, [torch.float16], torch.float16),
    (torch.float32, [torch.float32], torch.bfloat16),
    (torch.float8_e4m3fn, [torch.float32], torch.float16),
])
def test_weighted_sum_equals_direct_formula(numel, x_dtype, v_dtypes, out_dtype):
    gen = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, generator=gen).to(x_dtype)
    terms = [(w, (torch.randn(numel, generator=gen) * 0.1).to(d)) for w, d in zip((0.7, -1.3), v_dtypes,
                                                                                   strict=False)]
    direct = x.float()
    whole = x.float().clone()  # the same fused ops on the whole tensor at once (the unblocked computation): bit-equal
    for w, v in terms:
        direct = direct + w * v.float()
        whole.add_(v, alpha=w)
    out = torch.full((numel,), float("nan"), dtype=out_dtype)
    with BlockRunner() as runner:
        lo, hi = weighted_sum_into(runner, out, x, terms)
    assert torch.equal(out, whole.to(out_dtype))
    # the direct formula rounds w·v before adding, torch's add may fuse: fp32 sums agree to an ulp
    torch.testing.assert_close(out.float(), direct.to(out_dtype).float(), rtol=torch.finfo(out_dtype).eps, atol=1e-6)
    if numel:
        assert lo == pytest.approx(float(direct.min()), rel=1e-6) and hi == pytest.approx(float(direct.max()), rel=1e-6)


def test_non_finite_sum_shows_in_the_range():
    x = torch.zeros(3 * BLOCK + 7, dtype=torch.bfloat16)
    v = torch.zeros(x.numel())
    v[2 * BLOCK + 3] = float("nan")  # in the helper's half or the caller's: either way the range says NaN
    with BlockRunner() as runner:
        lo, hi = weighted_sum_into(runner, torch.empty_like(x), x, [(1.0, v)])
    assert lo != lo and hi != hi


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize(("a_dtype", "b_dtype"), [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float16),
                                                  (torch.float16, torch.float8_e5m2)])
def test_difference_and_its_statistics_equal_direct_formulas(numel, a_dtype, b_dtype):
    gen = torch.Generator().manual_seed(numel + 1)
    a = torch.randn(numel, generator=gen).to(a_dtype)
    b = a.clone().to(b_dtype)
    b[::3] = torch.randn(b[::3].shape, generator=gen).to(b_dtype)  # a third differ, the rest cancel to zero
    direct = (a.float() - b.float()).double()  # the difference in fp32, its statistics in float64
    out = torch.empty(numel)
    with BlockRunner() as runner:
        stats = difference_into(runner, out, a, b)
    assert torch.equal(out.double(), direct)
    assert stats.nonzero == int(torch.count_nonzero(direct))
    assert stats.sumsq == pytest.approx(float(direct.square().sum()), rel=1e-6)
    if numel:
        assert (stats.lo, stats.hi) == (float(direct.min()), float(direct.max()))


def test_difference_of_huge_values_sums_squares_in_float64():
    a = torch.full((BLOCK + 3,), 3e38)
    out = torch.empty_like(a)
    with BlockRunner() as runner:
        stats = difference_into(runner, out, a, torch.zeros_like(a))
    assert stats.finite and stats.sumsq == pytest.approx((BLOCK + 3) * 9e76, rel=1e-6)
