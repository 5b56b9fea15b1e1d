"""LIBERO adapter: observation mapping, the evaluation protocol on a stand-in suite, safe loading of the
suites' initial states, and (when the optional `libero` package and its assets are present) a smoke test
on a real LIBERO environment.
"""

from __future__ import annotations

import importlib.util
import math

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


def test_init_states_load_with_weights_only(tmp_path):
    states = np.random.default_rng(0).normal(size=(5, 9))
    torch.save(states, tmp_path / "task.pruned_init")  # how LIBERO's files were written
    assert np.array_equal(load_init_states(tmp_path / "task.pruned_init"), states)
    torch.save({"states": states, "callback": print}, tmp_path / "evil.pruned_init")
    with pytest.raises(CapvectorError, match="loads safely"):
        load_init_states(tmp_path / "evil.pruned_init")
    torch.save(states[0], tmp_path / "flat.pruned_init")
    with pytest.raises(CapvectorError, match="2-D float array"):
        load_init_states(tmp_path / "flat.pruned_init")


def make_push_right() -> PushRight:
    """A `module:callable` policy factory for the CLI."""
    return PushRight()


@pytest.mark.skipif(LIBERO_INSTALLED, reason="checks the message shown when the extra is missing")
def test_cli_says_how_to_install_the_extra():
    from capvector.cli import app

    r = CliRunner().invoke(app, ["eval-libero", "--policy", "test_sim_libero:make_push_right",
                                 "--episodes", "1"])
    assert r.exit_code == 2 and "pip install 'capvector[libero]'" in r.output


def test_libero_package_suites_and_init_states():
    """The PyPI package ships every suite's BDDL files and fixed initial states."""
    if not LIBERO_INSTALLED:
        pytest.skip(NOT_INSTALLED)
    from capvector.sim.libero import SUITES, LiberoSuite

    for name in SUITES:
        suite = LiberoSuite(name)
        assert len(suite.tasks) == (90 if name == "libero_90" else 10)
        states = suite.init_states(0)
        assert states.shape[0] == 50 and states.dtype == np.float64
    assert suite.tasks[0].instruction and "_" not in suite.tasks[0].instruction


def test_smoke_real_libero_env():
    """One real environment, a few steps of a still policy, rendered off-screen."""
    if not LIBERO_INSTALLED:
        pytest.skip(NOT_INSTALLED)
    from capvector.sim.libero import LiberoSuite, assets_status

    assets, why = assets_status()
    if assets is None:
        pytest.skip(why)

    class Still(PushRight):
        def act(self, observation):
            self.seen.append(observation)
            return STILL_ACTION[None].repeat(2, axis=0)

    policy = Still()
    cfg = LiberoConfig(suite="libero_spatial", tasks=(0,), episodes=1, image_size=64, max_steps=4, wait_steps=2)
    result = evaluate_libero(policy, cfg, suite=LiberoSuite("libero_spatial"))
    assert result.episodes[0].length == 4 and not result.episodes[0].success
    obs = policy.seen[0]
    assert obs["image"].shape == (2, 3, 64, 64) and obs["image"].std() > 0
    assert obs["proprio"].shape == (8,) and np.isfinite(obs["proprio"]).all()


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
