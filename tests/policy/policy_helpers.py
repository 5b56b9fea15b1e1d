"""Helpers for the policy/objectives/trainer tests (a uniquely named module, so it never shadows another conftest)."""

from __future__ import annotations

from torch.utils.data import default_collate

from capvector.policy import PolicyConfig
from capvector.train import SyntheticDemoDataset


def small_config(**kw) -> PolicyConfig:
    base = dict(width=32, depth=2, heads=2, embedder="hash", chunk=4)
    base.update(kw)
    return PolicyConfig(**base)


def batch_of(ds: SyntheticDemoDataset, indices: list[int]) -> dict:
    return default_collate([ds[i] for i in indices])
