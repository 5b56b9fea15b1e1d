"""Fixtures for the orthogonal regulariser: a tiny random Llama, and capability vectors extracted from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import capvector

torch.set_num_threads(1)


def _llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def make_llama():
    return _llama


@pytest.fixture(scope="session")
def dense_vector(tmp_path_factory) -> Path:
    """A dense vector τ = θ_aux − θ_sft over every tensor of the tiny Llama (seeded perturbations)."""
    root = tmp_path_factory.mktemp("orthvec")
    for role, seed in (("sft", 1), ("aux", 2)):
        model = _llama(0)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / role)
    capvector.extract(root / "sft", root / "aux", root / "vec", progress=False)
    return root / "vec"
