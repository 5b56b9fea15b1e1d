"""Fixtures for the orthogonal regulariser: a tiny random Llama, and capability vectors extracted from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import capvector
from testing_common import SMALL_LLAMA, tiny_llama


def _llama(seed: int):
    return tiny_llama(seed, **SMALL_LLAMA)


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


@pytest.fixture(scope="session")
def factored_vector(tmp_path_factory) -> Path:
    """A factored vector from two PEFT LoRA adapters (q_proj, v_proj; r=2) on the tiny Llama."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("orthlora")
    for role, seed in (("sft", 1), ("aux", 2)):
        model = get_peft_model(_llama(0), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / role)
    capvector.extract(root / "sft", root / "aux", root / "vec", progress=False)
    return root / "vec"
