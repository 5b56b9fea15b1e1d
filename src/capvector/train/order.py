"""Data order as a pure function of (seed, step): same seed → same batches, and resuming needs no replay.

Epoch e is a permutation drawn from a generator seeded with (seed, e); global step s takes the slice
[s·B, (s+1)·B) of the concatenated epochs. With W processes, rank r takes every W-th index of the
global batch, so 1 and 2 processes see the same global batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import torch
from torch.utils.data import Sampler

from capvector.errors import CapvectorError


@lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batch(seed: int, step: int, n: int, batch_size: int) -> list[int]:
    """Dataset indices of global batch `step` (wrapping over epochs, each epoch its own permutation)."""
    if n <= 0:
        raise CapvectorError("dataset is empty: nothing to train on")
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        take = min(batch_size - len(out), n - offset)
        out.extend(epoch_permutation(seed, epoch, n)[offset : offset + take].tolist())
        pos += take
    return out


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of global batches `start`, `start+1`, …, `stop−1`."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size % world_size:
            raise CapvectorError(f"batch_size {batch_size} is not divisible by {world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield global_batch(self.seed, step, self.n, self.batch_size)[self.rank :: self.world_size]
