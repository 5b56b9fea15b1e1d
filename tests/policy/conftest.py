"""Fixtures for the tiny VLA, objectives and trainer: small configs and synthetic data following the data contract."""

from __future__ import annotations

import pytest
import torch
from policy_helpers import small_config

from capvector.policy import PolicyConfig
from capvector.train import SyntheticDemoDataset

torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg() -> PolicyConfig:
    return small_config()


@pytest.fixture
def tiny_ds() -> SyntheticDemoDataset:
    return SyntheticDemoDataset(length=64, chunk=4, seed=3, episode_len=8)
