"""The precomputed teacher-feature file: one tensor per sample under "<episode>/<step>", written atomically.

Written by `foundation.precompute_features` (or by a user's own foundation model), read by `PrecomputedTeacher`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from capvector.io.atomic import atomic_save_safetensors


def feature_key(episode: int, step: int) -> str:
    """The key of one sample's features."""
    return f"{int(episode)}/{int(step)}"


def write_teacher_features(path: str | Path, features: Mapping[str, torch.Tensor]) -> Path:
    """Write a feature file for `PrecomputedTeacher` atomically (temp file, then rename)."""
    return atomic_save_safetensors({k: v.float() for k, v in features.items()}, path)
