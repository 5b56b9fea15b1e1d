"""What every test folder shares, so any subset of folders runs as the whole suite does: one torch thread (a shared
2-core machine), offscreen MuJoCo rendering, and the tiny-VLA fixtures (their helpers are in testing_common.py)."""

from __future__ import annotations

import os

import pytest
import torch

from testing_common import small_config

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    """A tiny VLA's `PolicyConfig` (hash embedder: no model download)."""
    return small_config()


@pytest.fixture
def tiny_ds():
    """64 synthetic samples following the data contract, chunk 4 to match `tiny_cfg`."""
    from capvector.train import SyntheticDemoDataset

    return SyntheticDemoDataset(length=64, chunk=4, seed=3, episode_len=8)
