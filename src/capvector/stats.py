"""Confidence intervals for success rates and seed-level tests of differences (plain math: no simulator needed)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval (well-behaved at 0/n and n/n, unlike the normal approximation)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, {n}], found {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (rounding would miss p̂ = 0 or 1)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Difference p1 − p2 of two success rates with Newcombe's hybrid score interval (his method 10).

    Built from each rate's Wilson interval, so it stays inside [−1, 1] and behaves at 0/n and n/n, where the
    Wald interval of a difference collapses. Returns (difference, low, high).
    """
    p1, p2 = k1 / max(n1, 1), k2 / max(n2, 1)
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, low), min(1.0, high)


# ---- seed-level inference: the training seed is the unit -------------------------------------------------------
# Episodes of one trained policy are not independent draws of the method's success rate (per-seed success varies
# far more than binomial noise), so claims about methods are tested on per-seed means.


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with integer `df` ≥ 1 (closed form, Abramowitz & Stegun 26.7.3–4)."""
    if df < 1:
        raise ValueError(f"t distribution: df must be ≥ 1, found {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = term = c
            for k in range(3, df - 1, 2):
                term *= c * c * (k - 1) / k
                total += term
        return min(1.0, 2.0 / math.pi * (theta + s * total))
    total, term = 1.0, 1.0
    for k in range(2, df, 2):
        term *= c * c * (k - 1) / k
        total += term
    return min(1.0, s * total)


def t_quantile(confidence: float, df: int) -> float:
    """The t such that P(|T| ≤ t) = confidence (e.g. 2.776 for 95% at df 4), by bisection on the closed form."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"t quantile: confidence must be in (0, 1), found {confidence}")
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < confidence:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < confidence else (lo, mid)
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed values with a t interval (mean ± t·s/√n). One value gives an unbounded interval."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval: no values")
    mean = sum(values) / n
    if n == 1:
        return mean, -math.inf, math.inf
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile(confidence, n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def seed_difference(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> dict[str, object]:
    """Difference of two arms' per-seed success (dicts seed → value), as mean a − mean b with a t interval.

    Paired over the seeds both arms ran (the seed fixes data order and, for arms from one init, the init), which
    removes the seed-to-seed variance the arms share; Welch's interval (df rounded down) when no seed is shared.
    """
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        diffs = [a[s] - b[s] for s in shared]
        d, lo, hi = mean_interval(diffs, confidence)
        return {"diff": d, "ci": [lo, hi], "method": "paired t over seeds", "seeds": shared}
    va, vb = list(a.values()), list(b.values())
    if len(va) < 2 or len(vb) < 2:
        ma = sum(va) / max(1, len(va))
        mb = sum(vb) / max(1, len(vb))
        return {"diff": ma - mb, "ci": [-math.inf, math.inf], "method": "too few seeds", "seeds": []}
    ma, mb = sum(va) / len(va), sum(vb) / len(vb)
    sa = sum((v - ma) ** 2 for v in va) / (len(va) - 1) / len(va)
    sb = sum((v - mb) ** 2 for v in vb) / (len(vb) - 1) / len(vb)
    se = math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (len(va) - 1) + sb**2 / (len(vb) - 1)) if se > 0 else len(va) + len(vb) - 2
    half = t_quantile(confidence, max(1, int(df))) * se
    return {"diff": ma - mb, "ci": [ma - mb - half, ma - mb + half], "method": "Welch t over seeds", "seeds": []}


def bootstrap_difference(a: dict[int, float], b: dict[int, float], resamples: int = 10000, seed: int = 0,
                         confidence: float = 0.95) -> list[float]:
    """Percentile interval of mean a − mean b when training seeds are resampled (paired when seeds are shared)."""
    import random

    rng = random.Random(seed)
    shared = sorted(set(a) & set(b))
    stats = []
    for _ in range(resamples):
        if len(shared) >= 2:
            pick = [rng.choice(shared) for _ in shared]
            stats.append(sum(a[s] - b[s] for s in pick) / len(pick))
        else:
            ra = [rng.choice(list(a.values())) for _ in a]
            rb = [rng.choice(list(b.values())) for _ in b]
            stats.append(sum(ra) / len(ra) - sum(rb) / len(rb))
    stats.sort()
    tail = (1 - confidence) / 2
    return [stats[int(tail * (resamples - 1))], stats[int((1 - tail) * (resamples - 1))]]
