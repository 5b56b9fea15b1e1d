"""Fixtures for the capability-vector core: tiny random checkpoints written by real libraries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from testing_common import tiny_llama


def perturbed(seed: int, scale: float, base_seed: int = 0):
    """The tiny Llama of `base_seed`, every parameter moved by seeded noise (a stand-in fine-tune)."""
    model = tiny_llama(base_seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="session")
def llama_trio(tmp_path_factory) -> dict[str, Path]:
    """θ_pre, θ_sft, θ_aux as sharded safetensors directories (fp32)."""
    root = tmp_path_factory.mktemp("trio")
    out = {}
    for role, model in (("pre", tiny_llama(0)), ("sft", perturbed(1, 0.01)), ("aux", perturbed(2, 0.01))):
        model.save_pretrained(root / role, max_shard_size="40KB")
        out[role] = root / role
    return out
