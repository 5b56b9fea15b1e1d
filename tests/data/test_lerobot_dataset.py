"""LeRobotDataset v3.0 export/import: identical samples after a round trip, the layout's metadata, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from demo_helpers import CAMERAS, EPISODES, random_episode, write_demo_dataset
from typer.testing import CliRunner

from capvector.cli import app
from capvector.data import open_dataset
from capvector.data.format import load_episode, read_manifest, write_episode
from capvector.data.lerobot import LeRobotDemoDataset, export_lerobot
from capvector.errors import CapvectorError
from capvector.io.hashing import file_sha256

FPS = 20


@pytest.fixture(scope="module")
def exported(demo_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "lr"
    export_lerobot(demo_dataset, out, fps=FPS)
    return out


def assert_same_samples(a, b, order):
    assert len(a) == len(b)
    for i in order:
        x, y = a[i], b[i]
        assert x.keys() == y.keys(), i
        for key, value in x.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == y[key].dtype and torch.equal(value, y[key]), (i, key)
            else:
                assert value == y[key], (i, key)


def test_round_trip_gives_identical_samples(demo_dataset, exported):
    original, imported = open_dataset(demo_dataset, chunk=4), open_dataset(exported, chunk=4)
    assert isinstance(imported, LeRobotDemoDataset)
    assert_same_samples(original, imported, range(len(original)))
    # without a cache every sample decodes its episode alone, from the keyframe before it (seeking backwards)
    uncached = LeRobotDemoDataset(exported, chunk=4, cache_mb=0)
    assert_same_samples(original, uncached, reversed(range(len(original))))
    assert [e["task"] for e in imported.entries] == [t for t, _, _ in EPISODES]
    only_push = open_dataset(exported, chunk=4, tasks=["push-v3"])
    assert len(only_push) == 9 and only_push[0]["instruction"] == "push the puck"


def test_files_and_metadata_follow_the_v3_layout(demo_dataset, exported):
    info = json.loads((exported / "meta/info.json").read_text())
    lengths = [n for _, _, n in EPISODES]
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(lengths), 2)
    video = info["features"]["observation.images.corner3"]
    assert video["dtype"] == "video" and video["shape"] == [10, 14, 3]
    assert video["info"]["video.codec"] == "h264" and video["info"]["video.fps"] == FPS
    assert info["features"]["observation.depth.topview"] == {"dtype": "float32", "shape": [10, 14],
                                                             "names": ["height", "width"]}
    for cam in CAMERAS:
        assert (exported / f"videos/observation.images.{cam}/chunk-000/file-000.mp4").is_file()
    frames = pq.read_table(exported / "data/chunk-000/file-000.parquet").to_pydict()
    assert frames["index"] == list(range(sum(lengths)))
    assert frames["episode_index"] == [e for e, n in enumerate(lengths) for _ in range(n)]
    assert frames["frame_index"] == [t for n in lengths for t in range(n)]
    assert np.allclose(frames["timestamp"], [t / FPS for n in lengths for t in range(n)])
    assert frames["task_index"] == [0] * 5 + [1] * 9 + [0] * 3
    manifest = read_manifest(demo_dataset)
    raw = load_episode(demo_dataset, manifest["episodes"][1])
    assert np.array_equal(np.array(frames["observation.depth.topview"][5:14], dtype=np.float32), raw["depth"][:, 1])
    assert np.array_equal(np.array(frames["observation.environment_state"][5:14], dtype=np.float32), raw["state"])
    tasks = pq.read_table(exported / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1], "task": ["reach the goal", "push the puck"]}
    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 5), (5, 14), (14, 17)]
    assert episodes[2]["videos/observation.images.topview/from_timestamp"] == pytest.approx(14 / FPS)
    stats = json.loads((exported / "meta/stats.json").read_text())
    everything = np.concatenate([load_episode(demo_dataset, e)["actions"] for e in manifest["episodes"]])
    assert np.allclose(stats["action"]["mean"], everything.astype(np.float64).mean(axis=0))
    assert np.allclose(stats["action"]["std"], everything.astype(np.float64).std(axis=0))
    assert stats["action"]["count"] == [sum(lengths)]
    pixels = np.concatenate([load_episode(demo_dataset, e)["image"][:, 0] for e in manifest["episodes"]])
    assert np.allclose(np.array(stats["observation.images.corner3"]["mean"]).ravel(),
                       pixels.transpose(1, 0, 2, 3).reshape(3, -1).mean(axis=1) / 255)


def test_export_is_atomic_and_leaves_the_input_alone(demo_dataset, tmp_path):
    before = {p.name: file_sha256(p) for p in demo_dataset.rglob("*") if p.is_file()}
    out = tmp_path / "lr"
    out.mkdir()
    with pytest.raises(CapvectorError, match="already exists"):
        export_lerobot(demo_dataset, out)
    bad = write_demo_dataset(tmp_path / "bad", episodes=[("a", "x", 4), ("b", "y", 3)])
    manifest = read_manifest(bad)
    manifest["episodes"][1] = write_bad_episode(bad, manifest["episodes"][1])
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CapvectorError, match=r"episodes/000001.npz: array 'image' is uint8 \(2, 3, 6, 14\) per step, "
                                             r"the first episode's is uint8 \(2, 3, 10, 14\)"):
        export_lerobot(bad, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "lr"]  # nothing half-written
    with pytest.raises(CapvectorError, match="overlaps input"):
        export_lerobot(demo_dataset, demo_dataset / "inside")
    assert before == {p.name: file_sha256(p) for p in demo_dataset.rglob("*") if p.is_file()}


def write_bad_episode(root, entry):
    """Episode 1 rendered at another image size: its shape disagrees with the first episode's."""
    arrays = random_episode(np.random.default_rng(1), 3, h=6)
    return write_episode(root, 1, arrays) | {k: entry[k] for k in ("task", "instruction", "seed", "success")}


def test_bad_or_missing_metadata_is_one_line_naming_the_file(exported, tmp_path):
    copy = tmp_path / "copy"

    def fresh():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(exported, copy)
        return json.loads((copy / "meta/info.json").read_text())

    def write_info(info):
        (copy / "meta/info.json").write_text(json.dumps(info))

    info = fresh()
    write_info(info | {"codebase_version": "v2.1"})
    with pytest.raises(CapvectorError, match=r"meta/info.json: codebase_version expected 'v3.0', found 'v2.1'"):
        open_dataset(copy)
    (copy / "meta/info.json").write_text("{not json")
    with pytest.raises(CapvectorError, match=r"meta/info.json: cannot read JSON"):
        open_dataset(copy)
    (copy / "meta/info.json").unlink()
    with pytest.raises(CapvectorError, match="no manifest.json .* and no meta/info.json"):  # neither format
        open_dataset(copy)
    with pytest.raises(CapvectorError, match=r"no meta/info.json \(not a LeRobotDataset\)"):
        LeRobotDemoDataset(copy)

    info = fresh()
    del info["features"]["observation.depth.corner3"]
    write_info(info)
    with pytest.raises(CapvectorError, match=r"feature 'observation.depth.corner3' missing"):
        open_dataset(copy)

    fresh()
    (copy / "videos/observation.images.topview/chunk-000/file-000.mp4").unlink()
    with pytest.raises(CapvectorError, match=r"videos/observation.images.topview/chunk-000/file-000.mp4 is missing"):
        open_dataset(copy)

    fresh()
    (copy / "meta/tasks.parquet").unlink()
    with pytest.raises(CapvectorError, match=r"meta/tasks.parquet is missing"):
        open_dataset(copy)

    fresh()
    (copy / "meta/episodes/chunk-000/file-000.parquet").write_bytes(b"not parquet")
    with pytest.raises(CapvectorError, match=r"meta/episodes/chunk-000/file-000.parquet: cannot read"):
        open_dataset(copy)

    fresh()
    video = copy / "videos/observation.images.corner3/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[:200])
    with pytest.raises(CapvectorError, match=r"observation.images.corner3/chunk-000/file-000.mp4: cannot decode"):
        open_dataset(copy)[0]

    info = fresh()
    info["features"]["observation.cam_to_world.corner3"]["shape"] = [2, 8]
    write_info(info)
    ds = open_dataset(copy)
    with pytest.raises(CapvectorError, match=r"file-000.parquet: column 'observation.cam_to_world.corner3' has "
                                             r"shape \[4, 4\] per frame .* meta/info.json says \[2, 8\]"):
        ds[0]

    info = fresh()
    info["features"]["observation.images.corner3"]["shape"] = [14, 10, 3]
    write_info(info)
    with pytest.raises(CapvectorError, match=r"file-000.mp4: frames are \[10, 14, 3\], meta/info.json feature "
                                             r"'observation.images.corner3' says \[14, 10, 3\]"):
        open_dataset(copy)[0]


def test_cli_exports_and_the_trainer_reads_the_result(demo_dataset, tmp_path):
    from capvector.policy import PolicyConfig
    from capvector.train.datasets import training_dataset

    out = tmp_path / "lr"
    r = CliRunner().invoke(app, ["data", "export", "--input", str(demo_dataset), "--output", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"output": str(out), "episodes": 3, "frames": 17, "tasks": 2, "fps": 80}
    r = CliRunner().invoke(app, ["data", "export", "--input", str(demo_dataset), "--output", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    ds = training_dataset(str(out), PolicyConfig(chunk=3))
    assert isinstance(ds, LeRobotDemoDataset) and ds[0]["actions"].shape == (3, 4)
