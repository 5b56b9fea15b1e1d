"""Env creation, rendering geometry, determinism and perturbations (real MetaWorld + MuJoCo, OSMesa)."""

import mujoco
import numpy as np
import pytest

from capvector.errors import CapvectorError
from capvector.sim import SimConfig, SimEnv, make_env
from capvector.sim.perturb import PERTURBATIONS, Perturbation, parse_perturbation

CFG = SimConfig(image_size=48, cameras=("corner3", "topview"))


@pytest.fixture(scope="module")
def env():
    e = SimEnv("push-v3", CFG)
    yield e
    e.close()


def test_observation_shapes_and_content(env):
    env.reset(0)
    obs, geo = env.observation(), env.geometry()
    assert obs["image"].shape == (2, 3, 48, 48) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 10  # a real scene, not a blank buffer
    assert obs["proprio"].dtype == np.float32 and np.allclose(obs["proprio"], env.raw_obs[:4])
    assert obs["instruction"] == "push the puck to the goal"
    assert geo["depth"].shape == (2, 48, 48) and np.all(geo["depth"] > 0) and np.all(np.isfinite(geo["depth"]))
    rot = geo["cam_to_world"][:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)


def test_depth_intrinsics_extrinsics_agree_with_a_known_sphere(env):
    """Project a sphere's centre with K and the pose; the rendered depth there is centre depth − radius."""
    env.reset(1)
    centre, radius = np.array([0.1, 0.75, 0.15]), 0.03
    env.rig.extra_geoms = [(int(mujoco.mjtGeom.mjGEOM_SPHERE), np.array([radius] * 3), centre,
                            np.array([1.0, 0.0, 1.0, 1.0]))]
    try:
        geo = env.geometry()
    finally:
        env.rig.extra_geoms = []
    for v in range(2):
        pose, k = geo["cam_to_world"][v].astype(np.float64), geo["intrinsics"][v].astype(np.float64)
        p_cam = pose[:3, :3].T @ (centre - pose[:3, 3])
        assert p_cam[2] > 0  # in front of the camera (OpenCV: +z forward)
        u, w = (k @ p_cam)[:2] / p_cam[2]
        d = geo["depth"][v, int(w), int(u)]
        assert abs(d - (p_cam[2] - radius)) < 0.01


def test_same_seed_same_episode_start(env):
    a = env.reset(5).copy()
    img_a = env.observation()["image"]
    env.reset(6)
    b = env.reset(5)
    assert np.array_equal(a, b) and np.array_equal(img_a, env.observation()["image"])
    assert not np.array_equal(env.reset(6)[4:7], a[4:7])  # other seed, other object layout


@pytest.mark.parametrize("name", [p for p in PERTURBATIONS if p != "none"])
def test_each_perturbation_changes_the_image_and_is_undone(env, name):
    env.reset(3)
    clean = env.observation()["image"]
    env.reset(3, Perturbation(name, 1.0))
    perturbed = env.observation()["image"]
    changed = (perturbed != clean).any(axis=1)  # (V, H, W) pixels that differ in any channel
    assert changed.mean() > 0.01
    env.reset(3)
    assert np.array_equal(env.observation()["image"], clean)  # model edits restored at the next reset


def test_perturbation_parsing_and_errors(env):
    assert parse_perturbation("camera:0.5") == Perturbation("camera", 0.5)
    assert parse_perturbation("none").severity == 0.0
    with pytest.raises(CapvectorError, match="unknown"):
        parse_perturbation("fog")
    with pytest.raises(CapvectorError, match="severity"):
        parse_perturbation("camera:2")
    with pytest.raises(CapvectorError, match=r"expected shape \(4,\), found \(3,\)"):
        env.step(np.zeros(3))


def test_bad_task_and_camera_are_named():
    with pytest.raises(CapvectorError, match="not-a-task"):
        SimEnv("not-a-task")
    with pytest.raises(CapvectorError, match="nocam"):
        SimEnv("reach-v3", SimConfig(cameras=("nocam",)))


def test_a_bad_camera_closes_the_metaworld_env_it_opened(monkeypatch):
    import capvector.sim.env as env_module

    closed = []

    def make_and_watch(task):
        mw = make_metaworld(task)
        close = mw.close
        mw.close = lambda: (closed.append(task), close())
        return mw

    make_metaworld = env_module._make_metaworld
    monkeypatch.setattr(env_module, "_make_metaworld", make_and_watch)
    with pytest.raises(CapvectorError, match="nocam"):
        SimEnv("reach-v3", SimConfig(cameras=("nocam",)))
    assert closed == ["reach-v3"]


def test_combined_render_equals_separate_renders(env):
    env.reset(2)
    rgb, depth = env.rig.rgb_depth(env.data)
    assert np.array_equal(rgb, env.rig.rgb(env.data)) and np.array_equal(depth, env.rig.depth(env.data))


def test_make_env_builds_the_metaworld_env_with_the_default_settings():
    env = make_env("reach-v3")
    try:
        assert isinstance(env, SimEnv) and env.config == SimConfig()
        env.reset(0)
        assert env.observation()["image"].shape == (1, 3, 64, 64)
    finally:
        env.close()
