"""Checkpoint directories: `checkpoints/step_XXXXXXX/` holds what `accelerator.save_state` writes (optimizer, every
process's RNG states; weights: `trained.safetensors` with the trained tensors only, or the engine's own sharded
files under FSDP/DeepSpeed) plus `trainer_state.json` (step, config),
written last; the directory is renamed into place when complete, so resume never picks up half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_write_text

PROJECTOR = "aux_projector.safetensors"
TRAINED = "trained.safetensors"  # the trained tensors under whole-weight engines (not frozen ones)
STATE = "trainer_state.json"
_OLD_FORMAT = "trainable.safetensors"  # written by capvector ≤ 0.2's own checkpointing


def write_state(ckpt: Path, state: dict) -> None:
    atomic_write_text(ckpt / STATE, json.dumps(state, indent=2) + "\n")


def read_state(ckpt: Path) -> dict:
    if (ckpt / _OLD_FORMAT).is_file():
        raise CapvectorError(f"checkpoint {ckpt} was written by an older capvector (its own format, not "
                             "accelerate's); finish that run with the older version or delete the checkpoints/ folder")
    return json.loads((ckpt / STATE).read_text())


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / STATE).is_file()) if ckpt_dir.is_dir() else []
    return done[-1] if done else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / STATE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
