"""Atomic file writes for policies and runs (see `capvector.io.atomic`): a crash never leaves a half-written output."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from capvector.io.atomic import atomic_file, atomic_write_text

__all__ = ["atomic_save_safetensors", "atomic_write_text"]


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write CPU-contiguous copies of `tensors` as safetensors at `path`, atomically."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)
