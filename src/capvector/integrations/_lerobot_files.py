"""Finding the `model.safetensors` of a LeRobot policy or an openpi PyTorch checkpoint.

LeRobot's `PreTrainedPolicy.save_pretrained` writes one `model.safetensors` (no shards) and the policy
`config.json` into a directory; training runs put it at
`<run>/checkpoints/<step>/pretrained_model/` with `checkpoints/last` linking the newest step.
"""

from __future__ import annotations

from pathlib import Path

from capvector.errors import CapvectorError
from capvector.integrations._family import FamilyFiles
from capvector.integrations._files import require_dir

WEIGHTS = "model.safetensors"
PRETRAINED_MODEL_DIR = "pretrained_model"


def locate_lerobot(path: Path, family: str) -> FamilyFiles:
    """The directory holding `model.safetensors`: the path itself, its `pretrained_model/`, or the last step's."""
    root = require_dir(path, family)
    for cand in (root, root / PRETRAINED_MODEL_DIR, root / "checkpoints" / "last" / PRETRAINED_MODEL_DIR):
        if (cand / WEIGHTS).is_file():
            return FamilyFiles(main=cand)
    raise CapvectorError(
        f"{root}: no LeRobot {family} policy weights; expected {WEIGHTS} in it, in {PRETRAINED_MODEL_DIR}/ "
        f"or in checkpoints/last/{PRETRAINED_MODEL_DIR}/"
    )


def locate_openpi(path: Path) -> FamilyFiles:
    """openpi's `scripts/train_pytorch.py` writes `<checkpoint_dir>/<step>/model.safetensors` (+ optimizer.pt,
    metadata.pt); accept the step directory or the experiment directory (then its highest numeric step)."""
    root = require_dir(path, "openpi")
    if (root / WEIGHTS).is_file():
        return FamilyFiles(main=root)
    steps = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / WEIGHTS).is_file()]
    if not steps:
        raise CapvectorError(f"{root}: no openpi weights; expected {WEIGHTS} in it or in a <step>/ subdirectory")
    return FamilyFiles(main=max(steps, key=lambda p: int(p.name)))
