"""Seed-level statistics against printed tables and direct formulas."""

from __future__ import annotations

import math

import pytest

from capvector.stats import bootstrap_difference, mean_interval, seed_difference, t_cdf_two_sided, t_quantile

# Two-sided 95% critical values of Student's t (standard printed tables).
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 9: 2.2622, 19: 2.0930, 30: 2.0423}


@pytest.mark.parametrize("df,expected", sorted(T_TABLE.items()))
def test_t_quantile_matches_tables(df, expected):
    assert math.isclose(t_quantile(0.95, df), expected, abs_tol=1e-4)


def test_t_cdf_closed_forms():
    # df 1 is the Cauchy distribution; df 2 has P(|T| ≤ t) = t / sqrt(2 + t²).
    for t in (0.3, 1.0, 4.0):
        assert math.isclose(t_cdf_two_sided(t, 1), 2 / math.pi * math.atan(t), rel_tol=1e-12)
        assert math.isclose(t_cdf_two_sided(t, 2), t / math.sqrt(2 + t * t), rel_tol=1e-12)
    # large df approaches the normal: P(|Z| ≤ 1.959964) = 0.95
    assert math.isclose(t_cdf_two_sided(1.959964, 2001), 0.95, abs_tol=2e-4)


def test_mean_interval_direct_formula():
    values = [57.0, 36.0, 65.0, 35.0, 55.0]
    m, lo, hi = mean_interval(values)
    s = math.sqrt(sum((v - 49.6) ** 2 for v in values) / 4)
    assert math.isclose(m, 49.6) and math.isclose(hi - m, 2.776445 * s / math.sqrt(5), rel_tol=1e-6)
    assert mean_interval([3.0]) == (3.0, -math.inf, math.inf)


def test_seed_difference_pairs_shared_seeds_and_falls_back_to_welch():
    a = {0: 60.0, 1: 40.0, 2: 70.0}
    b = {0: 50.0, 1: 30.0, 2: 62.0}  # a − b = 10, 10, 8: paired removes the shared seed variance
    paired = seed_difference(a, b)
    assert paired["method"] == "paired t over seeds" and paired["seeds"] == [0, 1, 2]
    assert paired["ci"][0] > 0  # the arms differ consistently although their spreads overlap
    welch = seed_difference(a, {5: 50.0, 6: 30.0, 7: 62.0})
    assert welch["method"] == "Welch t over seeds" and welch["ci"][0] < 0
    va, vb = list(a.values()), [50.0, 30.0, 62.0]
    ma, mb = sum(va) / 3, sum(vb) / 3
    sa = sum((v - ma) ** 2 for v in va) / 2 / 3
    sb = sum((v - mb) ** 2 for v in vb) / 2 / 3
    df = int((sa + sb) ** 2 / (sa**2 / 2 + sb**2 / 2))
    assert math.isclose(welch["ci"][1] - welch["diff"], t_quantile(0.95, df) * math.sqrt(sa + sb))


def test_bootstrap_over_seeds_contains_the_mean_difference():
    a = {s: 50.0 + 3 * s for s in range(6)}
    b = {s: 45.0 + 2 * s for s in range(6)}
    lo, hi = bootstrap_difference(a, b, resamples=2000)
    assert lo <= 7.5 <= hi and lo >= 5.0 and hi <= 10.0  # per-seed differences are 5..10
