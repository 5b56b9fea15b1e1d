"""The second embodiment: robosuite's Panda tasks behind the embedded benchmark's env interface (real robosuite and
MuJoCo, OSMesa): observation shapes, the task frame and action directions against robosuite's own world frame,
upright images, seeded layouts, perturbations, the scripted experts, and collect/eval through the commands.

Without robosuite (the [libero] extra) these tests skip.
"""

from __future__ import annotations

import json

import mujoco
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from capvector.errors import CapvectorError
from capvector.sim.base import SimConfig, make_env
from capvector.sim.perturb import PERTURBATIONS, Perturbation
from capvector.sim.tasks import split_tasks

pytest.importorskip("robosuite", reason="robosuite is not installed (pip install 'capvector[libero]')")

from capvector.sim.experts import ScriptedExpert  # noqa: E402
from capvector.sim.robosuite_env import TO_TASK, RobosuiteEnv  # noqa: E402

CFG = SimConfig(image_size=48, max_steps=150)


@pytest.fixture(scope="module")
def env():
    e = make_env("rs-lift-panda", CFG)
    yield e
    e.close()


def _task_frame(env: RobosuiteEnv, world: np.ndarray) -> np.ndarray:
    """MetaWorld's axes written out: x = the robot's right (robosuite −y), y = away from it (robosuite +x), z up,
    origin at the robot base at table-top height."""
    base = env.data.body("robot0_base").xpos
    table_z = env.rs.table_offset[2]
    return np.array([-(world[1] - base[1]), world[0] - base[0], world[2] - table_z])


def test_make_env_routes_by_task_name(env):
    assert isinstance(env, RobosuiteEnv) and env.instruction == "pick up the cube and lift it"


def test_observation_shapes_and_content(env):
    env.reset(0)
    obs, geo = env.observation(), env.geometry()
    assert obs["image"].shape == (1, 3, 48, 48) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 10
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    assert np.allclose(obs["proprio"], env.raw_obs[:4]) and env.raw_obs.shape == (39,)
    assert obs["task"] == "rs-lift-panda"
    assert geo["depth"].shape == (1, 48, 48) and np.all(geo["depth"] > 0)
    rot = geo["cam_to_world"][:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)


def test_state_is_in_the_task_frame(env):
    env.reset(1)
    hand = _task_frame(env, env.data.site_xpos[env.rs.robots[0].eef_site_id])
    cube = _task_frame(env, env.data.body(env.rs.cube.root_body).xpos)
    assert np.allclose(env.raw_obs[0:3], hand, atol=1e-6) and np.allclose(env.raw_obs[4:7], cube, atol=1e-6)
    q = env.data.qpos[env.rs.robots[0]._ref_gripper_joint_pos_indexes]
    assert env.raw_obs[3] == pytest.approx((q[0] - q[1]) / 0.08, abs=1e-6)  # finger gap over the fully open gap
    assert 0.4 < cube[1] < 0.7 and abs(cube[2] - 0.02) < 0.015  # on the table, in front of the robot
    assert np.allclose(env.raw_obs[36:39], env.raw_obs[4:7] + [0, 0, 0.1])  # Lift's goal: 10 cm above the start
    before = env.raw_obs.copy()
    env.step(np.array([0.5, 0, 0, -1], dtype=np.float32))
    assert np.array_equal(env.raw_obs[18:36], before[0:18])  # MetaWorld's layout: the previous frame
    assert np.array_equal(env.raw_obs[36:39], before[36:39])


def test_actions_move_along_the_task_axes_and_the_gripper_closes_on_plus_one(env):
    for axis in range(3):
        env.reset(2)
        start = env.raw_obs[:3].copy()
        action = np.zeros(4, dtype=np.float32)
        action[axis], action[3] = 1.0, -1.0
        for _ in range(6):
            env.step(action)
        moved = env.raw_obs[:3] - start
        assert moved[axis] > 0.02 and np.all(np.abs(np.delete(moved, axis)) < 0.5 * moved[axis])
    env.reset(2)
    opening = env.raw_obs[3]
    for _ in range(15):
        env.step(np.array([0, 0, 0, 1.0], dtype=np.float32))
    assert env.raw_obs[3] < opening - 0.3  # +1 closes, as in MetaWorld
    for _ in range(15):
        env.step(np.array([0, 0, 0, -1.0], dtype=np.float32))
    assert env.raw_obs[3] > 0.9


def test_images_are_upright_and_the_cube_projects_onto_red_pixels(env):
    """Projecting the (red) cube's centre with the rig's intrinsics and task-frame pose lands on red pixels (a pose
    in robosuite's world frame would not); a magenta marker near the table's front edge, on the robot's right,
    shows up where the pose puts it, in the lower left of the image (rows bottom-up, as robosuite's own renderer
    returns them, or a mirrored image would put it elsewhere)."""
    env.reset(3)
    image, geo = env.observation()["image"][0].astype(int), env.geometry()
    pose, k = geo["cam_to_world"][0].astype(np.float64), geo["intrinsics"][0].astype(np.float64)

    def pixel(task_point: np.ndarray) -> tuple[int, int]:
        p_cam = pose[:3, :3].T @ (task_point - pose[:3, 3])
        u, v = (k @ p_cam)[:2] / p_cam[2]
        return int(u), int(v)

    u, v = pixel(env.raw_obs[4:7])
    r, g, b = image[:, v, u]
    assert r > 100 and r > 2 * g and r > 2 * b
    marker = np.array([0.2, 0.75, 0.03])  # task frame: right of the robot, near the camera
    world = TO_TASK.T @ marker + env.origin
    env.rig.extra_geoms = [(int(mujoco.mjtGeom.mjGEOM_SPHERE), np.full(3, 0.03), world, np.array([1.0, 0, 1, 1]))]
    try:
        image = env.observation()["image"][0].astype(int)
    finally:
        env.rig.extra_geoms = []
    u, v = pixel(marker)
    assert u < 24 and v > 24  # lower left: the camera faces the robot, so the robot's right is the image's left
    r, g, b = image[:, v, u]
    assert r > 150 and b > 150 and g < 80


def test_seeded_layouts_and_the_global_generator_untouched(env):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = env.reset(5).copy()
    img = env.observation()["image"]
    env.reset(6)
    b = env.reset(5)
    assert np.array_equal(a, b) and np.array_equal(img, env.observation()["image"])
    assert np.linalg.norm(env.reset(6)[4:6] - a[4:6]) > 1e-3  # another seed, another cube position
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("name", [p for p in PERTURBATIONS if p not in ("none", "init_noise")])
def test_each_scene_perturbation_changes_the_image_and_is_undone(env, name):
    env.reset(3)
    clean = env.observation()["image"]
    env.reset(3, Perturbation(name, 1.0))
    assert (env.observation()["image"] != clean).any(axis=1).mean() > 0.01
    env.reset(3)
    assert np.array_equal(env.observation()["image"], clean)


def test_init_noise_moves_the_hand_before_the_episode(env):
    clean = env.reset(4)[:3].copy()
    moved = env.reset(4, Perturbation("init_noise", 1.0))[:3]
    assert np.linalg.norm(moved - clean) > 0.01 and env.steps == 0


def test_bad_action_shape_and_values_are_user_errors(env):
    env.reset(0)
    with pytest.raises(CapvectorError, match=r"expected shape \(4,\), found \(3,\)"):
        env.step(np.zeros(3))
    with pytest.raises(CapvectorError, match="non-finite"):
        env.step(np.array([0, np.nan, 0, 0]))


def test_split_names_accept_robosuite_tasks_and_reject_unknown_ones():
    assert split_tasks("rs-lift-panda,rs-stack-panda") == ["rs-lift-panda", "rs-stack-panda"]
    with pytest.raises(CapvectorError, match="rs-door-jaco"):
        split_tasks("rs-lift-panda,rs-door-jaco")
    with pytest.raises(CapvectorError, match="'rs-door-jaco' is not a robosuite task"):
        RobosuiteEnv("rs-door-jaco")
    with pytest.raises(CapvectorError, match="nocam"):
        RobosuiteEnv("rs-lift-panda", SimConfig(cameras=("nocam",)))


@pytest.mark.parametrize("task", ["rs-lift-panda", "rs-stack-panda", "rs-lift-ur5e"])
def test_the_scripted_expert_succeeds_with_the_demo_noise(task):
    e = make_env(task, CFG)
    expert = ScriptedExpert(noise=0.1, seed=0)
    expert.bind(e)
    try:
        for seed in (11, 12):
            e.reset(seed)
            done = success = False
            while not done:
                success, done = e.step(expert.act({})[0])
            assert success, f"{task} seed {seed}: not solved in {e.steps} steps"
    finally:
        e.close()


def test_collect_and_eval_commands_on_a_robosuite_task(tmp_path):
    from capvector.commands.sim import collect_command, eval_command
    from capvector.data import open_dataset

    app = typer.Typer()
    app.command("collect")(collect_command)
    app.command("eval")(eval_command)
    runner = CliRunner()
    out = runner.invoke(app, ["collect", "-o", str(tmp_path / "d"), "--split", "rs-lift-panda", "--episodes", "1",
                              "--noise", "0.1", "--image-size", "32", "--json"])
    assert out.exit_code == 0, out.output
    data = open_dataset(tmp_path / "d")
    item = data[0]
    assert item["image"].shape == (1, 3, 32, 32) and item["state"].shape == (39,) and item["actions"].shape[1] == 4
    assert item["instruction"] == "pick up the cube and lift it"
    res = runner.invoke(app, ["eval", "--policy", "expert", "--split", "rs-lift-panda", "--episodes", "1",
                              "--image-size", "32", "--perturb", "distractors:0.5", "-o", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["overall"]["n_success"] == 1
