"""One MetaWorld task as a seeded, goal-observable env with fast rendering, perturbations and privileged state."""

from __future__ import annotations

import mujoco
import numpy as np

from capvector.errors import CapvectorError
from capvector.sim.base import SimConfig, TaskEnv, checked_action
from capvector.sim.perturb import Perturbation, Scene
from capvector.sim.tasks import INSTRUCTIONS

__all__ = ["SimConfig", "SimEnv"]


def _make_metaworld(task: str):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    if task not in ALL_V3_ENVIRONMENTS:
        raise CapvectorError(f"task {task!r} is not a MetaWorld v3 task")
    env = ALL_V3_ENVIRONMENTS[task]()
    # Goal-observable, with a fresh seeded object/goal layout at every reset (MetaWorld's own MT1 freezes it).
    env._partially_observable = False
    del env.sawyer_observation_space
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env._set_task_called = True
    return env


class SimEnv(TaskEnv):
    """reset(seed, perturbation) → raw_obs; step(action) → (success, done).

    `raw_obs` (39-d, privileged: objects and goal) is for experts and logging only.
    """

    def __init__(self, task: str, config: SimConfig | None = None) -> None:
        self.task, self.config = task, config or SimConfig()
        self.instruction = INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))
        self.mw = _make_metaworld(task)
        self.model, self.data = self.mw.model, self.mw.data
        self._init_rig(self.config.cameras)

    def reset(self, seed: int, perturbation: Perturbation | Scene | None = None) -> np.ndarray:
        """New episode: layout from `seed`; the scene's perturbations drawn from the same seed (or, for a fixed
        scene, from its own). Returns raw_obs."""
        streams = self._apply_scene(seed, perturbation)
        self.mw.seed(int(seed))
        self.raw_obs, _ = self.mw.reset()
        for part, rng in streams:
            if part.name == "init_noise":
                for _ in range(int(round(15 * part.severity))):
                    self.raw_obs, *_ = self.mw.step(np.append(rng.uniform(-1, 1, 3), -1.0).astype(np.float32))
                self.mw.curr_path_length = 0
        mujoco.mj_forward(self.model, self.data)
        self.steps = 0
        self.reward = 0.0
        return self.raw_obs

    def step(self, action: np.ndarray) -> tuple[bool, bool]:
        """Apply one action; returns (success, done). done on success or at max_steps."""
        self.raw_obs, reward, _, _, info = self.mw.step(checked_action(action))
        self.reward = float(reward)
        self.steps += 1
        success = bool(info["success"] > 0)
        return success, success or self.steps >= self.config.max_steps

    def proprio(self) -> np.ndarray:
        return self.raw_obs[:4].astype(np.float32)

    def _close_sim(self) -> None:
        self.mw.close()
