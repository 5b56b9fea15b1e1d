"""Dataset round trip against the raw arrays, checksum failures, resume determinism, contract dtypes."""

import json

import numpy as np
import pytest
import torch

from capvector.data import open_dataset, verify_dataset
from capvector.data.collect import collect
from capvector.errors import CapvectorError
from capvector.sim import SimConfig

SIM = SimConfig(image_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "demos"
    collect(root, ["reach-v3"], 2, seed=1, sim=SIM, progress=False)
    return root


def test_samples_match_the_stored_episode(dataset):
    ds = open_dataset(dataset, chunk=8)
    man = json.loads((dataset / "manifest.json").read_text())
    lengths = [e["length"] for e in man["episodes"]]
    assert len(ds) == sum(lengths)
    with np.load(dataset / man["episodes"][1]["file"]) as z:
        raw = {k: z[k] for k in z.files}
    n = lengths[1]
    last = ds[len(ds) - 1]  # final step of episode 1: one real action, then padding by the last
    assert torch.equal(last["actions"], torch.from_numpy(np.repeat(raw["actions"][n - 1:n], 8, axis=0)))
    assert last["action_mask"].tolist() == [True] + [False] * 7
    s = ds[lengths[0] + 2]
    assert torch.equal(s["actions"], torch.from_numpy(raw["actions"][2:10]))
    assert torch.equal(s["image"], torch.from_numpy(raw["image"][2]))
    assert torch.equal(s["proprio"], torch.from_numpy(raw["state"][2, :4]))
    assert int(s["episode"]) == 1 and int(s["step"]) == 2
    batch = torch.utils.data.default_collate([ds[0], s])
    expect = {"image": (torch.uint8, (2, 1, 3, 32, 32)), "proprio": (torch.float32, (2, 4)),
              "actions": (torch.float32, (2, 8, 4)), "action_mask": (torch.bool, (2, 8)),
              "depth": (torch.float32, (2, 1, 32, 32)), "intrinsics": (torch.float32, (2, 1, 3, 3)),
              "cam_to_world": (torch.float32, (2, 1, 4, 4)), "episode": (torch.int64, (2,)),
              "step": (torch.int64, (2,))}
    for key, (dtype, shape) in expect.items():
        assert batch[key].dtype == dtype and tuple(batch[key].shape) == shape, key
    assert batch["instruction"] == ["move the gripper to the goal position"] * 2
    assert float(batch["actions"].abs().max()) <= 1.0


def test_corruption_is_detected(dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    f = copy / "episodes" / "000001.npz"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CapvectorError, match="checksum mismatch for episodes/000001.npz"):
        verify_dataset(copy)
    with pytest.raises(CapvectorError, match="checksum mismatch"):
        open_dataset(copy)
    f.unlink()
    with pytest.raises(CapvectorError, match="missing"):
        open_dataset(copy)


def test_resume_extends_to_the_same_bytes_as_a_fresh_run(dataset, tmp_path):
    part = tmp_path / "part"
    collect(part, ["reach-v3"], 1, seed=1, sim=SIM, progress=False)
    collect(part, ["reach-v3"], 2, seed=1, sim=SIM, progress=False)
    sha = lambda p: [e["sha256"] for e in json.loads((p / "manifest.json").read_text())["episodes"]]  # noqa: E731
    assert sha(part) == sha(dataset)
    with pytest.raises(CapvectorError, match=r"different settings \['noise'\]"):
        collect(part, ["reach-v3"], 2, seed=1, noise=0.1, sim=SIM, progress=False)


def test_incomplete_and_foreign_directories_are_refused(dataset, tmp_path):
    import shutil

    copy = tmp_path / "inc"
    shutil.copytree(dataset, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CapvectorError, match="did not finish"):
        open_dataset(copy)
    man["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CapvectorError, match="format_version expected 1, found 99"):
        open_dataset(copy)
    with pytest.raises(CapvectorError, match="no manifest.json"):
        open_dataset(tmp_path)


def test_perturbed_collection_varies_the_camera_per_episode(dataset, tmp_path):
    """Same seeds with camera:0.5: the expert still succeeds, but every episode has its own camera pose,
    different from the unperturbed dataset's single pose, and recorded in the stored extrinsics."""
    from capvector.sim.perturb import Perturbation

    moved = tmp_path / "moved"
    manifest = collect(moved, ["reach-v3"], 2, seed=1, sim=SIM, progress=False,
                       perturbation=Perturbation("camera", 0.5))
    assert manifest["settings"]["perturbation"] == "camera:0.5"

    def first_pose(root, i):
        entry = json.loads((root / "manifest.json").read_text())["episodes"][i]
        with np.load(root / entry["file"]) as z:
            return z["cam_to_world"][0]

    pose, fixed = [first_pose(moved, i) for i in range(2)], first_pose(dataset, 0)
    assert not np.allclose(pose[0], pose[1]) and not np.allclose(pose[0], fixed)
    assert np.allclose(first_pose(dataset, 1), fixed)
    with pytest.raises(CapvectorError, match="perturbation"):
        collect(moved, ["reach-v3"], 2, seed=1, sim=SIM, progress=False)  # resuming needs the same settings


def test_a_fixed_scene_records_every_episode_in_one_novel_environment(dataset, tmp_path):
    """camera:0.5+colors:0.5@7: one camera pose shared by all episodes, unlike the clean dataset's; label kept."""
    from capvector.sim.perturb import parse_scene

    manifest = collect(tmp_path / "novel", ["reach-v3"], 2, seed=1, sim=SIM, progress=False,
                       perturbation=parse_scene("colors:0.5+camera:0.5@7"))
    assert manifest["settings"]["perturbation"] == "camera:0.5+colors:0.5@7"
    poses, images = [], []
    for entry in manifest["episodes"]:
        with np.load(tmp_path / "novel" / entry["file"]) as z:
            poses.append(z["cam_to_world"][0])
            images.append(z["image"][0])
    with np.load(dataset / json.loads((dataset / "manifest.json").read_text())["episodes"][0]["file"]) as z:
        clean_pose = z["cam_to_world"][0]
    assert np.array_equal(poses[0], poses[1]) and not np.allclose(poses[0], clean_pose)
    assert not np.array_equal(images[0], images[1])  # same environment, another layout


def test_rendered_demos_round_trip_through_lerobot_v3(dataset, tmp_path):
    """Real renders (flat colours, depth, camera geometry) export to LeRobotDataset v3.0 and read back identical."""
    from capvector.data.lerobot import LeRobotDemoDataset, export_lerobot

    export_lerobot(dataset, tmp_path / "lr")
    original, imported = open_dataset(dataset, chunk=8), open_dataset(tmp_path / "lr", chunk=8)
    assert isinstance(imported, LeRobotDemoDataset) and len(imported) == len(original)
    for i in range(len(original)):
        x, y = original[i], imported[i]
        for key, value in x.items():
            assert torch.equal(value, y[key]) if isinstance(value, torch.Tensor) else value == y[key], (i, key)
