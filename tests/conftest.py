"""What every test folder shares, so any subset of folders runs as the whole suite does: one torch thread per
process (a shared 2-core machine; each pytest-xdist worker imports this file too), offscreen MuJoCo rendering, the
long-tests-first order, and the tiny-VLA fixtures (their helpers are in testing_common.py)."""

from __future__ import annotations

import os

import pytest
import torch

from testing_common import small_config

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a test marked `long` run first, each file kept whole (module fixtures are built once), so a
    parallel run (`./run.sh test`: `-n 2 --dist loadfile --no-loadscope-reorder`) starts them early instead of
    ending waiting on one."""
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: item.path not in long_files)


@pytest.fixture
def tiny_cfg():
    """A tiny VLA's `PolicyConfig` (hash embedder: no model download)."""
    return small_config()


@pytest.fixture
def tiny_ds():
    """64 synthetic samples following the data contract, chunk 4 to match `tiny_cfg`."""
    from capvector.train import SyntheticDemoDataset

    return SyntheticDemoDataset(length=64, chunk=4, seed=3, episode_len=8)
