"""How the weighted vectors λ_i·τ_i become one update of a tensor: their plain sum, or TIES / DARE handling of
sign and magnitude conflicts (Yadav et al. 2023; Yu et al. 2023), chunk by chunk in fp32.

With y_i = λ_i·s_i(τ_i), where s_i sparsifies (TIES: keep |τ_i| ≥ the k-th largest |τ_i| of the tensor;
DARE: keep each element with probability p and divide the survivors by p):

    sum, dare:        Δ = Σ_i y_i
    ties, dare-ties:  γ = sign(Σ_i y_i),  Δ = Σ_{i: sign(y_i) = γ} y_i / |{i: sign(y_i) = γ, y_i ≠ 0}|

and θ_meta = θ_base + Δ. λ_i enters before the sign election, so a negative λ_i votes against its vector's
sign, and nothing scales Δ afterwards: with equal λ_i = λ this is the papers' θ_base + λ·Δ(τ_1..τ_n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from capvector.errors import CapvectorError
from capvector.vectors.blocks import BlockRunner, value_range, weighted_sum_into
from capvector.vectors.sparsify import dare_keep, dare_key, keep_count, magnitude_threshold

METHODS = ("sum", "ties", "dare", "dare-ties")
DEFAULT_SEED = 0
DEFINITIONS = {
    "sum": "theta_meta = theta_base + sum_i weight_i * tau_i (fp32, cast to output dtype)",
    "ties": "theta_meta = theta_base + disjoint mean over the elected sign of weight_i * trim(tau_i, density) "
            "(TIES; fp32, cast to output dtype)",
    "dare": "theta_meta = theta_base + sum_i weight_i * drop(tau_i, keep=density) / density "
            "(DARE; fp32, cast to output dtype)",
    "dare-ties": "theta_meta = theta_base + disjoint mean over the elected sign of weight_i * drop(tau_i, "
                 "keep=density) / density (DARE + TIES sign election; fp32, cast to output dtype)",
}


@dataclass(frozen=True)
class Combine:
    """The combine method and its parameters: `density` is the kept fraction (TIES, by magnitude) or keep
    probability (DARE), in (0, 1]; `seed` keys DARE's draws (default 0, recorded)."""

    method: str = "sum"
    density: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CapvectorError(f"combine method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.seed is not None and not self.drops:
            raise CapvectorError(f"--seed applies to --combine dare or dare-ties; {self.method} is deterministic")
        if self.method == "sum":
            if self.density is not None:
                raise CapvectorError("--density applies to --combine ties, dare or dare-ties, not to the plain sum")
            return
        d = self.density
        if d is None:
            raise CapvectorError(f"--combine {self.method} needs --density, the fraction of each tensor kept, "
                                 "in (0, 1] (the papers use 0.1-0.3)")
        if isinstance(d, bool) or not isinstance(d, int | float) or not (math.isfinite(d) and 0 < d <= 1):
            raise CapvectorError(f"--density must be a number in (0, 1], found {d!r}")
        object.__setattr__(self, "density", float(d))
        if not self.drops:
            return
        seed = DEFAULT_SEED if self.seed is None else self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise CapvectorError(f"--seed must be a non-negative integer, found {seed!r}")
        object.__setattr__(self, "seed", seed)

    @property
    def trims(self) -> bool:
        return self.method == "ties"

    @property
    def drops(self) -> bool:
        return self.method in ("dare", "dare-ties")

    @property
    def elects(self) -> bool:
        return self.method in ("ties", "dare-ties")

    def to_json(self) -> dict:
        return {"method": self.method, "density": self.density, "seed": self.seed,
                "definition": DEFINITIONS[self.method]}

    def keep_rule(self, name: str, vector_index: int, numel: int,
                  chunks: Callable[[], Iterable[torch.Tensor]]) -> KeepRule:
        """What survives of the `vector_index`-th vector's tensor `name`; `chunks()` streams its fp32 values
        (read twice for the TIES threshold)."""
        if self.trims:
            assert self.density is not None
            return KeepRule(threshold=magnitude_threshold(chunks, keep_count(numel, self.density)))
        if self.drops:
            assert self.seed is not None
            return KeepRule(key=dare_key(self.seed, vector_index, name))
        return KeepRule()


@dataclass(frozen=True)
class KeepRule:
    """Elements of one vector's tensor that survive: |τ| ≥ threshold (TIES), and DARE's draws under `key`."""

    threshold: float = 0.0
    key: np.ndarray | None = None


def combine_into(runner: BlockRunner, out: torch.Tensor, x: torch.Tensor,
                 terms: Sequence[tuple[float, torch.Tensor, KeepRule]], combine: Combine,
                 offset: int) -> tuple[float, float]:
    """out = x + Δ of the (λ_i, τ_i chunk, rule) terms in fp32, cast to out's dtype; `offset` is the chunk's first
    element in its tensor (DARE's draws). Returns (min, max) of the fp32 result, NaN if any input is not finite."""
    if combine.method == "sum":
        return weighted_sum_into(runner, out, x, [(w, v) for w, v, _ in terms])
    direct = out.dtype == torch.float32
    nan = torch.tensor(math.nan)

    def block(s: int, e: int, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ys = torch.empty(len(terms), e - s)
        finite = True
        for y, (weight, values, rule) in zip(ys, terms, strict=True):
            y.copy_(values[s:e])
            finite = finite and bool(torch.isfinite(y).all())  # before a NaN could be trimmed or dropped away
            if combine.trims:
                y.masked_fill_(y.abs() < rule.threshold, 0.0)
            if combine.drops:
                assert rule.key is not None and combine.density is not None
                y.masked_fill_(~dare_keep(rule.key, offset + s, e - s, combine.density), 0.0).div_(combine.density)
            y.mul_(weight)
        acc = out[s:e] if direct else scratch[: e - s]
        acc.copy_(x[s:e])
        acc.add_(disjoint_mean(ys) if combine.elects else ys.sum(0))
        lo_hi = torch.aminmax(acc)
        if not direct:
            out[s:e].copy_(acc)
        return lo_hi if finite else (nan, nan)

    return value_range(runner.map(x.numel(), block))


def disjoint_mean(ys: torch.Tensor) -> torch.Tensor:
    """Per element, the mean of the rows whose sign is the sign of the column sum (0 where none is)."""
    agree = ys * ys.sum(0).sign() > 0
    return torch.where(agree, ys, 0.0).sum(0) / agree.sum(0).clamp(min=1)
