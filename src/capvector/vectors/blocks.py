"""Elementwise chunk arithmetic in cache-sized blocks on two threads: merge and extract run it on every byte.

Whole-chunk torch ops stream a 32 MiB fp32 chunk through memory once per op (convert, add, min/max, convert
back: four passes), and torch's OpenMP threads spin-wait whenever another process holds a core. The same ops
run block by block keep each block in cache between ops, and a block of `BLOCK` elements is at torch's
parallel grain, so every op stays on its calling thread. Two Python threads split a chunk's blocks (torch
releases the GIL inside each op). Each op is the one a whole-chunk computation would run, element by element,
so the values are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import torch

BLOCK = 32768  # torch's parallel grain (at::internal::GRAIN_SIZE): ops on this many elements run serially
# dtypes torch promotes to fp32 inside an in-place op; float8 types must be converted first
PROMOTES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
T = TypeVar("T")
BlockFn = Callable[[int, int, torch.Tensor], T]  # (start, end, fp32 scratch of BLOCK elements) -> result


class BlockRunner:
    """Runs `fn(start, end, scratch)` over [0, numel) in blocks, half of them on a helper thread."""

    def __init__(self) -> None:
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capvector-blocks")
        self._scratch = (torch.empty(BLOCK), torch.empty(BLOCK))

    def map(self, numel: int, fn: BlockFn[T]) -> list[T]:
        half = numel // 2 // BLOCK * BLOCK
        if not half:
            return _span(fn, 0, numel, self._scratch[0])
        theirs = self._helper.submit(_span, fn, 0, half, self._scratch[1])
        try:
            mine = _span(fn, half, numel, self._scratch[0])
        except BaseException:
            wait([theirs])  # the helper must be done with the buffers before the caller reuses them
            raise
        return theirs.result() + mine

    def close(self) -> None:
        self._helper.shutdown(wait=True)

    def __enter__(self) -> BlockRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _span(fn: BlockFn[T], start: int, end: int, scratch: torch.Tensor) -> list[T]:
    return [fn(s, min(s + BLOCK, end), scratch) for s in range(start, end, BLOCK)]


def weighted_sum_into(runner: BlockRunner, out: torch.Tensor, x: torch.Tensor,
                      terms: Sequence[tuple[float, torch.Tensor]]) -> tuple[float, float]:
    """out = x + Σ w·v computed in fp32 and cast to out's dtype; returns (min, max) of the fp32 sums (NaN if any).

    All flat tensors of one length; x and the v's in any float dtype.
    """
    direct = out.dtype == torch.float32

    def block(s: int, e: int, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = out[s:e] if direct else scratch[: e - s]
        acc.copy_(x[s:e])
        for weight, v in terms:
            acc.add_(v[s:e], alpha=weight)
        lo_hi = torch.aminmax(acc)
        if not direct:
            out[s:e].copy_(acc)
        return lo_hi

    return value_range(runner.map(x.numel(), block))


def value_range(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(min, max) over the blocks' `aminmax` results; NaN when any block holds one (torch propagates it)."""
    if not parts:
        return 0.0, 0.0
    return float(torch.stack([p[0] for p in parts]).min()), float(torch.stack([p[1] for p in parts]).max())


@dataclass(frozen=True)
class ChunkStats:
    """Range, sum of squares (float64 over fp32 block sums) and nonzero count of a chunk."""

    lo: float
    hi: float
    sumsq: float
    nonzero: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def difference_into(runner: BlockRunner, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> ChunkStats:
    """out = a − b in fp32 (`out` fp32; a, b flat, any float dtype) and its statistics, in one pass over memory."""

    def block(s: int, e: int, _scratch: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor,
                                                                torch.Tensor]:
        d, other = out[s:e], b[s:e]
        d.copy_(a[s:e])
        d.sub_(other if other.dtype in PROMOTES else other.float())
        return torch.aminmax(d), torch.dot(d, d), torch.count_nonzero(d)

    parts = runner.map(out.numel(), block)
    lo, hi = value_range([p[0] for p in parts])
    if not parts or not (math.isfinite(lo) and math.isfinite(hi)):
        return ChunkStats(lo, hi, 0.0, 0)
    sumsq = float(torch.stack([p[1] for p in parts]).double().sum())
    if not math.isfinite(sumsq):  # squares beyond fp32's range: sum in float64
        sumsq = float(out.double().square().sum())
    return ChunkStats(lo, hi, sumsq, int(torch.stack([p[2] for p in parts]).sum()))
