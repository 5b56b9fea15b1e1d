"""On-disk demo format: DIR/manifest.json + DIR/episodes/NNNNNN.npz (one compressed episode per file).

Why npz: no extra dependency, one file per episode streams (a loader opens only the episodes it needs),
zlib compression shrinks the flat-coloured renders and depth several-fold, and a per-file sha256 makes
resuming and verification simple. Arrays per episode (T steps, V cameras):
image uint8 (T,V,3,H,W), depth float32 (T,V,H,W), proprio float32 (T,4), actions float32 (T,4),
state float32 (T,39) (privileged MetaWorld observation), intrinsics float32 (V,3,3),
cam_to_world float32 (T,V,4,4).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_write_bytes
from capvector.io.hashing import file_sha256
from capvector.io.jsonfile import read_json_object

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEYS = {"image": 5, "depth": 4, "proprio": 2, "actions": 2, "state": 2, "intrinsics": 3, "cam_to_world": 4}

# Where MetaWorld's 39-d observation keeps what a plan is about (the rest: quaternions, a second object, the
# previous frame). Samples also carry the state these many steps ahead (clamped at the episode's end), for
# objectives that supervise a plan (capvector.objectives.subgoal).
STATE_HAND, STATE_GRIPPER, STATE_OBJECT, STATE_GOAL = slice(0, 3), 3, slice(4, 7), slice(36, 39)
STATE_AHEAD_STEPS = (8, 16, 32)


def write_episode(root: Path, index: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write one episode atomically; returns its manifest entry (file, sha256, length)."""
    for key, ndim in KEYS.items():
        if key not in arrays or arrays[key].ndim != ndim:
            found = None if key not in arrays else arrays[key].shape
            raise CapvectorError(f"episode {index}: array {key!r} must have {ndim} dims, found {found}")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    rel = f"episodes/{index:06d}.npz"
    (root / "episodes").mkdir(parents=True, exist_ok=True)
    data = buf.getvalue()
    atomic_write_bytes(root / rel, data)
    return {"index": index, "file": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "length": int(arrays["actions"].shape[0])}


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise CapvectorError(f"dataset {root}: no {MANIFEST} (not a capvector demo dataset)")
    manifest = read_json_object(path, "dataset")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CapvectorError(f"dataset {path}: format_version expected {FORMAT_VERSION}, "
                             f"found {manifest.get('format_version')!r}")
    return manifest


def verify_episode(root: Path, entry: dict[str, Any]) -> None:
    path = root / entry["file"]
    if not path.is_file():
        raise CapvectorError(f"dataset {root}: episode file {entry['file']} is missing")
    found = file_sha256(path)
    if found != entry["sha256"]:
        raise CapvectorError(f"dataset {root}: checksum mismatch for {entry['file']}: "
                             f"expected sha256 {entry['sha256']}, found {found}")


def verify_dataset(root: str | Path) -> int:
    """Check every episode's sha256 against the manifest; returns the number of episodes."""
    root = Path(root)
    manifest = read_manifest(root)
    for entry in manifest["episodes"]:
        verify_episode(root, entry)
    return len(manifest["episodes"])


def load_episode(root: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    path = root / entry["file"]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise CapvectorError(f"dataset {root}: cannot read {entry['file']} ({e})") from None
    for key, ndim in KEYS.items():
        if key not in arrays or arrays[key].ndim != ndim:
            found = None if key not in arrays else arrays[key].shape
            raise CapvectorError(f"dataset {root}: {entry['file']} key {key!r}: expected {ndim} dims, found {found}")
    return arrays
