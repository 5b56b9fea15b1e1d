"""meta/stats.json: per-feature min, max, mean, std and count, accumulated episode by episode in float64.

LeRobot normalises with these (mean/std or min/max). Quantiles are left out: exact ones need every value at
once, which a streamed export does not hold.
"""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Statistics over axis 0 of every batch given to `update`; `shape` reshapes the result (images: (3,1,1))."""

    def __init__(self, shape: tuple[int, ...] | None = None) -> None:
        self.shape, self.count, self.frames = shape, 0, 0
        self.min = self.max = self.sum = self.sumsq = None

    def update(self, values: np.ndarray, frames: int) -> None:
        x = values.astype(np.float64)
        lo, hi, s, sq = x.min(axis=0), x.max(axis=0), x.sum(axis=0), np.square(x).sum(axis=0)
        if self.min is None:
            self.min, self.max, self.sum, self.sumsq = lo, hi, s, sq
        else:
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
            self.sum, self.sumsq = self.sum + s, self.sumsq + sq
        self.count += x.shape[0]
        self.frames += frames

    def result(self) -> dict[str, list]:
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - np.square(mean), 0.0))
        shape = self.shape or np.shape(mean)
        out = {k: np.reshape(v, shape).tolist() for k, v in
               (("min", self.min), ("max", self.max), ("mean", mean), ("std", std))}
        return out | {"count": [self.frames]}
