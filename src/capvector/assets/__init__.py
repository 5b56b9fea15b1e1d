"""Files shipped inside the package: the pretrained tiny VLA the demo starts from and the frozen scene teacher."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from capvector.errors import CapvectorError

PRETRAINED_NAME = "tiny_vla_pretrained"
SCENE_TEACHER_NAME = "scene_teacher"


def pretrained_policy_dir() -> Path:
    """The shipped θ_pre: a policy directory (config.json, model.safetensors, recipe.json with its numbers)."""
    path = Path(str(files("capvector.assets") / PRETRAINED_NAME))
    if not (path / "model.safetensors").is_file():
        raise CapvectorError(f"{path}: the shipped pretrained weights are missing; regenerate them with "
                             "`capvector pretrain` or pass --pretrained DIR")
    return path


def scene_teacher_dir() -> Path:
    """The shipped frozen scene teacher (teacher_config.json, teacher.safetensors, recipe.json with its numbers)."""
    path = Path(str(files("capvector.assets") / SCENE_TEACHER_NAME))
    if not (path / "teacher.safetensors").is_file():
        raise CapvectorError(f"{path}: the shipped scene teacher is missing; regenerate it with "
                             "`capvector teacher-pretrain` or pass a teacher directory")
    return path
