"""Which elements of a vector tensor survive sparsification before a TIES or DARE merge.

TIES keeps the largest magnitudes of a tensor: the threshold is its exact k-th largest |τ|, found in two
streamed passes of a radix select over the fp32 bit patterns (a non-negative float orders like its bits as
an integer), so a tensor of any size needs only chunk-sized memory. DARE keeps each element with
probability p: the draw of element i is the i-th output of a counter-based generator (numpy's Philox) keyed
by the seed, the vector's position and the tensor's name, so a chunk or block reads exactly its own draws
and the result does not depend on how the tensor is split or on which thread computes it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

_HALF = 1 << 16  # a 32-bit pattern is selected in two 16-bit halves


def keep_count(numel: int, density: float) -> int:
    """k = ⌈density·numel⌉ elements kept by magnitude: at least one of a non-empty tensor, all at density 1."""
    return min(numel, math.ceil(density * numel))


def magnitude_threshold(chunks: Callable[[], Iterable[torch.Tensor]], k: int) -> float:
    """The k-th largest |x| over the fp32 chunks `chunks()` yields (called once per pass); +inf when k is 0.

    Keeping |x| ≥ threshold keeps at least k elements, and all elements tied with the k-th.
    """
    if k <= 0:
        return math.inf
    high, rank = _select(_histogram(chunks, lambda bits: bits >> 16), k)
    low, _ = _select(_histogram(chunks, lambda bits: bits[(bits >> 16) == high] & (_HALF - 1)), rank)
    return float(torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32))


def _histogram(chunks: Callable[[], Iterable[torch.Tensor]],
               digit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    counts = torch.zeros(_HALF, dtype=torch.int64)
    for chunk in chunks():
        bits = chunk.float().abs().view(torch.int32)  # sign bit cleared: ordered like the magnitudes
        counts += torch.bincount(digit(bits), minlength=_HALF)
    return counts


def _select(counts: torch.Tensor, rank: int) -> tuple[int, int]:
    """(bin holding the rank-th largest element, its rank inside that bin), ranks counted from 1."""
    from_top = counts.flip(0).cumsum(0)
    i = int(torch.searchsorted(from_top, rank))  # first position whose running count reaches rank
    if i >= _HALF:
        raise ValueError(f"rank {rank} is beyond the {int(from_top[-1])} counted elements")
    before = int(from_top[i - 1]) if i else 0
    return _HALF - 1 - i, rank - before


def dare_key(seed: int, vector_index: int, name: str) -> np.ndarray:
    """The Philox key of one vector's tensor: a 128-bit digest of (seed, position of the vector, tensor name)."""
    digest = hashlib.blake2b(f"capvector-dare\0{seed}\0{vector_index}\0{name}".encode(), digest_size=16).digest()
    return np.frombuffer(digest, dtype=np.uint64).copy()


def dare_keep(key: np.ndarray, start: int, count: int, density: float) -> torch.Tensor:
    """Keep mask of elements [start, start+count): element i is kept when draw i < density·2⁶⁴."""
    if density >= 1.0:
        return torch.ones(count, dtype=torch.bool)
    generator = np.random.Philox(key=key)
    generator.advance(start // 4)  # each counter step gives four 64-bit draws
    draws = generator.random_raw(count + start % 4)[start % 4:]
    bound = min(int(density * 2.0**64), 2**64 - 1)  # a density just below 1 rounds up to 2⁶⁴ in float
    return torch.from_numpy(draws < np.uint64(bound))
