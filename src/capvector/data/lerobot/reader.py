"""LeRobotDataset v3.0 directory (as `capvector data export` writes it) → the same samples as DemoDataset.

Episodes are located through meta/episodes (data file and row range, video file and time range per camera),
so the reader does not assume one file per kind; the frames of one episode are read from its parquet row
groups and decoded from the keyframe before its first video frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capvector.data.dataset import EpisodeDataset
from capvector.data.lerobot import layout
from capvector.data.lerobot.columns import from_column
from capvector.data.lerobot.video import read_frames
from capvector.errors import CapvectorError


class LeRobotDemoDataset(EpisodeDataset):
    """Per-step samples (image, proprio, action chunk + mask, depth, camera geometry) of a v3.0 export."""

    def __init__(self, root: str | Path, chunk: int = 8, cache_mb: float = 4096,
                 tasks: list[str] | None = None) -> None:
        self.root = Path(root)
        self.info = layout.read_info(self.root)
        self.cameras = layout.camera_keys(self.info)
        self.fps: int = self.info["fps"]
        task_texts = set(_read_table(self.root, self.root / layout.TASKS_PATH, ["task"])["task"])
        entries = [e for e in self._episodes(task_texts) if tasks is None or e["task"] in tasks]
        super().__init__(entries, chunk, cache_mb)

    def _episodes(self, task_texts: set[str]) -> list[dict[str, Any]]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise CapvectorError(f"dataset {self.root}: no meta/episodes/chunk-*/file-*.parquet")
        entries = [row | {"meta_file": f} for f in files for row in _read_rows_of(f)]
        for row in entries:
            if not isinstance(row.get("episode_index"), int):
                raise CapvectorError(f"dataset {row['meta_file']}: column 'episode_index' missing or not integer")
        entries.sort(key=lambda r: r["episode_index"])
        for row in entries:
            where = f"dataset {row['meta_file']}: episode {row['episode_index']}"
            for key in ("tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index"):
                if row.get(key) is None:
                    raise CapvectorError(f"{where}: column {key!r} missing")
            if not row["tasks"] or row["tasks"][0] not in task_texts:
                raise CapvectorError(f"{where}: task {row['tasks'][:1]} is not in {layout.TASKS_PATH}")
            row["instruction"] = row["tasks"][0]
            row["task"] = row.get("capvector/task") or row["instruction"]
            row["index"] = row["episode_index"]
            row["data_file"] = self._path(self.info["data_path"], row, "data")
            for cam in self.cameras:
                key = f"videos/{layout.IMAGES}.{cam}"
                if row.get(f"{key}/from_timestamp") is None:
                    raise CapvectorError(f"{where}: column '{key}/from_timestamp' missing")
                row[f"video:{cam}"] = self._path(self.info["video_path"], row, key,
                                                 video_key=f"{layout.IMAGES}.{cam}")
        firsts: dict[Path, int] = {}
        for row in entries:  # a file's first global index turns dataset_from_index into a row number
            firsts[row["data_file"]] = min(firsts.get(row["data_file"], row["dataset_from_index"]),
                                           row["dataset_from_index"])
        for row in entries:
            row["row"] = row["dataset_from_index"] - firsts[row["data_file"]]
        return entries

    def _path(self, template: str, row: dict[str, Any], prefix: str, **keys: str) -> Path:
        try:
            path = self.root / template.format(chunk_index=row[f"{prefix}/chunk_index"],
                                               file_index=row[f"{prefix}/file_index"], **keys)
        except (KeyError, IndexError, ValueError) as e:
            raise CapvectorError(f"dataset {row['meta_file']}: episode {row['episode_index']}: cannot place "
                                 f"{prefix!r} with template {template!r} ({e})") from None
        if not path.is_file():
            raise CapvectorError(f"dataset {self.root}: {path.relative_to(self.root)} is missing "
                                 f"(episode {row['episode_index']})")
        return path

    def _read_episode(self, i: int) -> dict[str, np.ndarray]:
        entry, features = self.entries[i], self.info["features"]
        n = entry["length"]
        keys = [layout.STATE, layout.ACTION, layout.ENV_STATE, "episode_index", "frame_index",
                *(f"{p}.{c}" for c in self.cameras for p in layout.PER_CAMERA)]
        table = _read_rows(entry["data_file"], entry["row"], n, keys)
        cols = {k: from_column(table.column(k), features[k]["shape"], entry["data_file"], k) for k in keys}
        if not (np.all(cols["episode_index"] == entry["episode_index"]) and
                np.array_equal(cols["frame_index"], np.arange(n))):
            raise CapvectorError(f"dataset {entry['data_file']}: rows {entry['row']}..{entry['row'] + n - 1} are "
                                 f"not frames 0..{n - 1} of episode {entry['episode_index']}")
        images = []
        for cam in self.cameras:
            key, path = f"{layout.IMAGES}.{cam}", entry[f"video:{cam}"]
            frames = read_frames(path, entry[f"videos/{key}/from_timestamp"], n, self.fps)
            if list(frames.shape[1:]) != features[key]["shape"]:
                raise CapvectorError(f"dataset {path}: frames are {list(frames.shape[1:])}, meta/info.json "
                                     f"feature {key!r} says {features[key]['shape']}")
            images.append(frames.transpose(0, 3, 1, 2))
        per_camera = {p: np.stack([cols[f"{p}.{c}"] for c in self.cameras], axis=1) for p in layout.PER_CAMERA}
        return {"image": np.stack(images, axis=1), "proprio": cols[layout.STATE], "actions": cols[layout.ACTION],
                "state": cols[layout.ENV_STATE], "depth": per_camera[layout.DEPTH],
                "intrinsics": per_camera[layout.INTRINSICS][0],
                "cam_to_world": per_camera[layout.CAM_TO_WORLD]}


def _read_table(root: Path, path: Path, columns: list[str]) -> dict[str, list]:
    if not path.is_file():
        raise CapvectorError(f"dataset {root}: {path.relative_to(root)} is missing")
    try:
        return pq.read_table(path, columns=columns).to_pydict()
    except (OSError, KeyError, ValueError) as e:
        raise CapvectorError(f"dataset {path}: cannot read columns {columns} ({e})") from None


def _read_rows_of(path: Path) -> list[dict[str, Any]]:
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CapvectorError(f"dataset {path}: cannot read ({e})") from None


def _read_rows(path: Path, start: int, count: int, columns: list[str]) -> pa.Table:
    """Rows [start, start+count) of a parquet file, reading only the row groups that hold them."""
    try:
        f = pq.ParquetFile(path)
        sizes = np.array([f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        groups = [g for g in range(len(sizes)) if starts[g + 1] > start and starts[g] < start + count]
        table = f.read_row_groups(groups, columns=columns)
    except (OSError, KeyError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CapvectorError(f"dataset {path}: cannot read columns {columns} ({e})") from None
    first = int(starts[groups[0]]) if groups else 0
    if start + count > starts[-1]:
        raise CapvectorError(f"dataset {path}: expected rows {start}..{start + count - 1}, the file has {starts[-1]}")
    return table.slice(start - first, count)
