"""torch Datasets over recorded demos: one sample per timestep, in the data contract's dict form.

`EpisodeDataset` holds what every on-disk format shares (the sample layout, the action chunk and its mask, the
episode cache); `DemoDataset` reads capvector's own format, `capvector.data.lerobot.LeRobotDemoDataset` a
LeRobotDataset v3.0 export. `open_dataset` picks the reader from what the directory holds.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from capvector.data.format import MANIFEST, STATE_AHEAD_STEPS, load_episode, read_manifest, verify_episode
from capvector.errors import CapvectorError


class EpisodeDataset(Dataset):
    """Samples (episode, step) with the next `chunk` actions (padded by repeating the last, masked).

    `entries` describe the episodes in order (index, task, instruction, length); a subclass reads episode i's
    arrays (image (T,V,3,H,W) uint8, depth (T,V,H,W), proprio (T,4), actions (T,4), state (T,39),
    intrinsics (V,3,3), cam_to_world (T,V,4,4)) in `_read_episode`. Episodes are read on demand and kept in an
    LRU cache bounded by `cache_mb` of decoded arrays, so a dataset larger than memory still streams. Shuffled
    training touches every episode each epoch: a cache smaller than the dataset then decodes an episode for
    nearly every sample, so the default budget holds a few thousand 64 px episodes.
    """

    def __init__(self, entries: list[dict[str, Any]], chunk: int, cache_mb: float) -> None:
        if chunk < 1:
            raise CapvectorError(f"chunk: expected ≥ 1, found {chunk}")
        self.entries = entries
        self.chunk, self.cache_bytes = chunk, int(cache_mb * 2**20)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        lengths = np.array([e["length"] for e in self.entries], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])

    def _read_episode(self, i: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _episode(self, i: int) -> dict[str, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        arrays = self._read_episode(i)
        self._cache[i] = arrays
        self._cached_bytes += _nbytes(arrays)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= _nbytes(evicted)
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        i = int(np.searchsorted(self._starts, index, side="right") - 1)
        t = index - int(self._starts[i])
        entry, ep = self.entries[i], self._episode(i)
        n = ep["actions"].shape[0]
        idx = np.minimum(np.arange(t, t + self.chunk), n - 1)
        ahead = np.minimum(t + np.asarray(STATE_AHEAD_STEPS), n - 1)
        return {
            "image": torch.from_numpy(ep["image"][t].copy()),
            "proprio": torch.from_numpy(ep["proprio"][t].astype(np.float32)),
            "instruction": entry["instruction"],
            "task": entry["task"],
            "actions": torch.from_numpy(ep["actions"][idx].astype(np.float32)),
            "action_mask": torch.from_numpy(np.arange(t, t + self.chunk) < n),
            "depth": torch.from_numpy(ep["depth"][t].astype(np.float32)),
            "intrinsics": torch.from_numpy(ep["intrinsics"].astype(np.float32)),
            "cam_to_world": torch.from_numpy(ep["cam_to_world"][t].astype(np.float32)),
            "state": torch.from_numpy(ep["state"][t].astype(np.float32)),
            "state_ahead": torch.from_numpy(ep["state"][ahead].astype(np.float32)),
            "episode": torch.tensor(entry["index"], dtype=torch.int64),
            "step": torch.tensor(t, dtype=torch.int64),
        }


class DemoDataset(EpisodeDataset):
    """capvector's own format (manifest.json + compressed per-episode npz), checksummed on open."""

    def __init__(self, root: str | Path, chunk: int = 8, verify: bool = True, cache_mb: float = 4096,
                 tasks: list[str] | None = None) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if not self.manifest.get("complete", False):
            raise CapvectorError(f"dataset {self.root}: collection did not finish (manifest complete=false); "
                                 "rerun `capvector collect` with the same options to resume")
        entries = [e for e in self.manifest["episodes"] if tasks is None or e["task"] in tasks]
        if verify:
            for e in entries:
                verify_episode(self.root, e)
        super().__init__(entries, chunk, cache_mb)

    def _read_episode(self, i: int) -> dict[str, np.ndarray]:
        return load_episode(self.root, self.entries[i])


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def open_dataset(path: str | Path, chunk: int = 8, verify: bool = True, **kwargs: Any) -> EpisodeDataset:
    """The entry point `capvector train --data DIR` uses: a capvector demo directory (manifest.json) or a
    LeRobotDataset v3.0 directory (meta/info.json, read with the [lerobot-data] extra)."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return DemoDataset(root, chunk=chunk, verify=verify, **kwargs)
    if (root / "meta" / "info.json").is_file():
        from capvector.data.lerobot import LeRobotDemoDataset

        return LeRobotDemoDataset(root, chunk=chunk, **kwargs)
    raise CapvectorError(f"dataset {root}: no {MANIFEST} (capvector demo dataset) and no meta/info.json "
                         "(LeRobotDataset v3.0)")
