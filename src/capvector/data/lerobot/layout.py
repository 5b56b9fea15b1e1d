"""The LeRobotDataset v3.0 layout as capvector writes and reads it: paths, feature names, meta/info.json checks.

A demo episode maps onto LeRobot's conventions: proprio → `observation.state`, the expert's action → `action`,
MetaWorld's privileged observation → `observation.environment_state`, each camera's RGB → a video feature
`observation.images.<camera>`. What LeRobot has no convention for goes in as extra per-frame features, one per
camera: `observation.depth.<camera>` (float32 H×W, in parquet: bit-exact, where a 16-bit depth video would
quantise metres), `observation.intrinsics.<camera>` (3×3, constant over an episode) and
`observation.cam_to_world.<camera>` (4×4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.io.jsonfile import read_json_object

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
INFO_PATH, STATS_PATH, TASKS_PATH = "meta/info.json", "meta/stats.json", "meta/tasks.parquet"
CHUNKS_SIZE, DATA_FILE_MB, VIDEO_FILE_MB = 1000, 100, 200  # LeRobot's defaults, recorded in info.json

STATE, ACTION, ENV_STATE = "observation.state", "action", "observation.environment_state"
IMAGES, DEPTH, INTRINSICS, CAM_TO_WORLD = "observation.images", "observation.depth", "observation.intrinsics", \
    "observation.cam_to_world"
PER_CAMERA = (DEPTH, INTRINSICS, CAM_TO_WORLD)
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]


def feature(dtype: str, shape: list[int], names: list[str] | None = None) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "names": names}


def camera_keys(info: dict[str, Any]) -> list[str]:
    """Camera names in the order of their video features (the order of the image axis V)."""
    return [k.removeprefix(IMAGES + ".") for k, f in info["features"].items()
            if k.startswith(IMAGES + ".") and isinstance(f, dict) and f.get("dtype") == "video"]


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked for what the reader relies on; any gap is one line naming the file and key."""
    path = root / INFO_PATH
    if not path.is_file():
        raise CapvectorError(f"dataset {root}: no {INFO_PATH} (not a LeRobotDataset)")
    info = read_json_object(path, "dataset")
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise CapvectorError(f"dataset {path}: codebase_version expected {CODEBASE_VERSION!r}, "
                             f"found {info.get('codebase_version')!r}")
    for key, kind in (("fps", int), ("features", dict), ("data_path", str), ("video_path", str)):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise CapvectorError(f"dataset {path}: key {key!r} expected {kind.__name__}, found {info.get(key)!r}")
    if info["fps"] <= 0:
        raise CapvectorError(f"dataset {path}: fps expected > 0, found {info['fps']}")
    cameras = camera_keys(info)
    if not cameras:
        raise CapvectorError(f"dataset {path}: no video feature {IMAGES}.<camera> in 'features'")
    required = [STATE, ACTION, ENV_STATE, *INDEX_FEATURES, *(f"{p}.{c}" for c in cameras for p in PER_CAMERA)]
    for key in required:
        spec = info["features"].get(key)
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise CapvectorError(f"dataset {path}: feature {key!r} missing from 'features' (or has no shape); "
                                 "capvector reads datasets written by `capvector data export`")
    return info
