"""Files shipped inside the package: the pretrained tiny VLA the demo starts from and the frozen scene teacher."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from capvector.errors import CapvectorError

PRETRAINED_NAMES = {"tiny-vla": "tiny_vla_pretrained", "tiny-pi0": "tiny_pi0_pretrained"}  # per policy type
SCENE_TEACHER_NAME = "scene_teacher"


def pretrained_policy_dir(policy: str = "tiny-vla") -> Path:
    """The shipped θ_pre of a policy type: a policy directory (config.json, model.safetensors, recipe.json with its
    numbers)."""
    if policy not in PRETRAINED_NAMES:
        raise CapvectorError(f"no shipped pretrained weights for policy type {policy!r}; shipped: "
                             f"{sorted(PRETRAINED_NAMES)}")
    path = Path(str(files("capvector.assets") / PRETRAINED_NAMES[policy]))
    if not (path / "model.safetensors").is_file():
        raise CapvectorError(f"{path}: the shipped pretrained weights are missing; regenerate them with "
                             f"`capvector pretrain --policy {policy}` or pass --pretrained DIR")
    return path


def scene_teacher_dir() -> Path:
    """The shipped frozen scene teacher (teacher_config.json, teacher.safetensors, recipe.json with its numbers)."""
    path = Path(str(files("capvector.assets") / SCENE_TEACHER_NAME))
    if not (path / "teacher.safetensors").is_file():
        raise CapvectorError(f"{path}: the shipped scene teacher is missing; regenerate it with "
                             "`capvector teacher-pretrain` or pass a teacher directory")
    return path
