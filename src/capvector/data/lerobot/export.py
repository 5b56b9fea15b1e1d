"""capvector demo dataset → LeRobotDataset v3.0 directory (`capvector data export`).

All episodes go into one parquet file (a row group per episode, zstd: depth is most of it) and one mp4 per
camera, written as a stream: one episode's arrays are in memory at a time. LeRobot would start a new file past
100 MB (data) or 200 MB (video); its readers locate every episode through meta/episodes, so single files stay
valid, and the reader here follows meta/episodes the same way. The output is built under a hidden name and
renamed when complete.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capvector.data.format import KEYS, load_episode, read_manifest, verify_episode
from capvector.data.lerobot import layout
from capvector.data.lerobot.columns import to_column
from capvector.data.lerobot.stats import RunningStats
from capvector.data.lerobot.video import VideoWriter, stream_info
from capvector.errors import CapvectorError
from capvector.io.atomic import AtomicOutputDir

ROBOT_TYPE = "sawyer"  # MetaWorld's arm


def export_lerobot(source: str | Path, output: str | Path, fps: int = 80, overwrite: bool = False
                   ) -> dict[str, Any]:
    """Write `source` (a complete capvector demo dataset, checksums verified first) as LeRobotDataset v3.0 at
    `output`; returns meta/info.json. `fps` only sets timestamps (frame_index / fps) and the video rate."""
    source = Path(source)
    if fps < 1:
        raise CapvectorError(f"--fps: expected ≥ 1, found {fps}")
    manifest = read_manifest(source)
    if not manifest.get("complete", False):
        raise CapvectorError(f"dataset {source}: collection did not finish (manifest complete=false); "
                             "finish it with `capvector collect` before exporting")
    entries = manifest["episodes"]
    if not entries:
        raise CapvectorError(f"dataset {source}: no episodes to export")
    for entry in entries:
        verify_episode(source, entry)
    first = load_episode(source, entries[0])
    cameras = _camera_names(manifest, first["image"].shape[1])
    features = _features(first, cameras)
    instructions = list(dict.fromkeys(e["instruction"] for e in entries))
    with AtomicOutputDir(output, overwrite, inputs=[source]) as tmp:
        info = _write(source, entries, first, tmp, features, cameras, instructions, fps)
    return info


def _camera_names(manifest: dict[str, Any], views: int) -> list[str]:
    names = manifest.get("settings", {}).get("sim", {}).get("cameras")
    if isinstance(names, list) and len(names) == views and all(isinstance(n, str) and n for n in names):
        return names
    return [f"camera{v}" for v in range(views)]


def _features(arrays: dict[str, np.ndarray], cameras: list[str]) -> dict[str, dict[str, Any]]:
    _, _, _, h, w = arrays["image"].shape
    features = {
        layout.STATE: layout.feature("float32", [arrays["proprio"].shape[1]],
                           layout.STATE_NAMES if arrays["proprio"].shape[1] == 4 else None),
        layout.ACTION: layout.feature("float32", [arrays["actions"].shape[1]],
                            layout.ACTION_NAMES if arrays["actions"].shape[1] == 4 else None),
        layout.ENV_STATE: layout.feature("float32", [arrays["state"].shape[1]]),
    }
    for cam in cameras:
        features[f"{layout.IMAGES}.{cam}"] = layout.feature("video", [h, w, 3], ["height", "width", "channels"])
        features[f"{layout.DEPTH}.{cam}"] = layout.feature("float32", [h, w], ["height", "width"])
        features[f"{layout.INTRINSICS}.{cam}"] = layout.feature("float32", [3, 3])
        features[f"{layout.CAM_TO_WORLD}.{cam}"] = layout.feature("float32", [4, 4])
    return features | {k: layout.feature(dtype, [1]) for k, dtype in layout.INDEX_FEATURES.items()}


def _frame_columns(arrays: dict[str, np.ndarray], cameras: list[str]) -> dict[str, np.ndarray]:
    """Every parquet feature of one episode as (T, *shape) arrays (videos excluded)."""
    n = arrays["actions"].shape[0]
    columns = {layout.STATE: arrays["proprio"], layout.ACTION: arrays["actions"], layout.ENV_STATE: arrays["state"]}
    for v, cam in enumerate(cameras):
        columns[f"{layout.DEPTH}.{cam}"] = arrays["depth"][:, v]
        columns[f"{layout.INTRINSICS}.{cam}"] = np.broadcast_to(arrays["intrinsics"][v], (n, 3, 3))
        columns[f"{layout.CAM_TO_WORLD}.{cam}"] = arrays["cam_to_world"][:, v]
    return {k: np.asarray(a, dtype=np.float32) for k, a in columns.items()}


def _check_episode(arrays: dict[str, np.ndarray], first: dict[str, np.ndarray], where: str) -> None:
    """Every episode must have the first one's per-step shapes and dtypes: one parquet schema, one video size."""
    n = arrays["actions"].shape[0]
    for key in KEYS:
        a, b = arrays[key], first[key]
        if key != "intrinsics" and a.shape[0] != n:
            raise CapvectorError(f"{where}: array {key!r} has {a.shape[0]} steps, 'actions' has {n}")
        shape, expected = (a.shape, b.shape) if key == "intrinsics" else (a.shape[1:], b.shape[1:])
        if shape != expected or a.dtype != b.dtype:
            raise CapvectorError(f"{where}: array {key!r} is {a.dtype} {shape} per step, the first episode's is "
                                 f"{b.dtype} {expected}")


def _write(source: Path, entries: list[dict[str, Any]], first: dict[str, np.ndarray], out: Path,
           features: dict[str, dict[str, Any]], cameras: list[str], instructions: list[str], fps: int
           ) -> dict[str, Any]:
    h, w = features[f"{layout.IMAGES}.{cameras[0]}"]["shape"][:2]
    location = {"chunk_index": 0, "file_index": 0}
    data_path = out / layout.DATA_PATH.format(**location)
    data_path.parent.mkdir(parents=True)
    video_paths = {cam: out / layout.VIDEO_PATH.format(video_key=f"{layout.IMAGES}.{cam}", **location)
                   for cam in cameras}
    stats = {k: RunningStats((3, 1, 1) if f["dtype"] == "video" else None) for k, f in features.items()}
    rows: list[dict[str, Any]] = []
    total = 0
    with ExitStack() as stack:
        data = None
        videos = {cam: VideoWriter(path, fps, h, w) for cam, path in video_paths.items()}
        for writer in videos.values():
            stack.callback(writer.close)
        for e, entry in enumerate(entries):
            arrays = load_episode(source, entry)
            _check_episode(arrays, first, f"dataset {source}: {entry['file']}")
            n = arrays["actions"].shape[0]
            columns = _frame_columns(arrays, cameras)
            columns |= {"timestamp": (np.arange(n) / fps).astype(np.float32),
                        "frame_index": np.arange(n, dtype=np.int64),
                        "episode_index": np.full(n, e, dtype=np.int64),
                        "index": np.arange(total, total + n, dtype=np.int64),
                        "task_index": np.full(n, instructions.index(entry["instruction"]), dtype=np.int64)}
            table = pa.table({k: to_column(v) for k, v in columns.items()})
            if data is None:
                data = stack.enter_context(pq.ParquetWriter(data_path, table.schema, compression="zstd"))
            data.write_table(table)
            for key, values in columns.items():
                stats[key].update(values, n)
            start = videos[cameras[0]].frames / fps
            for v, cam in enumerate(cameras):
                frames = arrays["image"][:, v].transpose(0, 2, 3, 1)
                videos[cam].write(frames)
                stats[f"{layout.IMAGES}.{cam}"].update(frames.reshape(-1, 3) / 255.0, n)
            rows.append(_episode_row(e, entry, n, total, start, fps, cameras))
            total += n
    for cam, path in video_paths.items():
        features[f"{layout.IMAGES}.{cam}"]["info"] = stream_info(path)
    _write_meta(out, rows, instructions, {k: s.result() for k, s in stats.items()})
    info = {"codebase_version": layout.CODEBASE_VERSION, "robot_type": ROBOT_TYPE, "total_episodes": len(entries),
            "total_frames": total, "total_tasks": len(instructions), "chunks_size": layout.CHUNKS_SIZE,
            "data_files_size_in_mb": layout.DATA_FILE_MB, "video_files_size_in_mb": layout.VIDEO_FILE_MB, "fps": fps,
            "splits": {"train": f"0:{len(entries)}"}, "data_path": layout.DATA_PATH, "video_path": layout.VIDEO_PATH,
            "features": features}
    (out / layout.INFO_PATH).write_text(json.dumps(info, indent=4) + "\n")
    return info


def _episode_row(e: int, entry: dict[str, Any], n: int, total: int, start: float, fps: int,
                 cameras: list[str]) -> dict[str, Any]:
    """One row of meta/episodes: where the episode's frames are, plus capvector's own per-episode fields."""
    row: dict[str, Any] = {"episode_index": e, "tasks": [entry["instruction"]], "length": n,
                           "data/chunk_index": 0, "data/file_index": 0,
                           "dataset_from_index": total, "dataset_to_index": total + n}
    for cam in cameras:
        key = f"videos/{layout.IMAGES}.{cam}"
        row |= {f"{key}/chunk_index": 0, f"{key}/file_index": 0, f"{key}/from_timestamp": start,
                f"{key}/to_timestamp": start + n / fps}
    return row | {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "capvector/task": entry["task"],
                  "capvector/seed": entry.get("seed"), "capvector/success": entry.get("success")}


def _write_meta(out: Path, rows: list[dict[str, Any]], instructions: list[str], stats: dict[str, Any]) -> None:
    episodes = out / layout.EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes)
    pq.write_table(_tasks_table(instructions), out / layout.TASKS_PATH)
    (out / layout.STATS_PATH).write_text(json.dumps(stats, indent=4) + "\n")


def _tasks_table(instructions: list[str]) -> pa.Table:
    """meta/tasks.parquet as LeRobot writes it from pandas: `task_index` with the task text as the index, so
    `pandas.read_parquet` gives the same frame (the pandas schema metadata marks `task` as the index)."""
    table = pa.table({"task_index": pa.array(range(len(instructions)), pa.int64()),
                      "task": pa.array(instructions, pa.string())})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "creator": {"library": "capvector"},
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}]}
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
