"""One MetaWorld task as a seeded, goal-observable env with fast rendering, perturbations and privileged state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from capvector.errors import CapvectorError
from capvector.sim.perturb import Perturbation, Scene, apply_to_model, as_scene, distractor_geoms
from capvector.sim.render import CameraRig
from capvector.sim.tasks import INSTRUCTIONS


@dataclass(frozen=True)
class SimConfig:
    """Rendering and episode settings shared by collection and evaluation."""

    image_size: int = 64
    cameras: tuple[str, ...] = ("corner3",)  # 2 views: ("corner3", "topview")
    max_steps: int = 200

    def __post_init__(self) -> None:
        if not 1 <= len(self.cameras) <= 2:
            raise CapvectorError(f"cameras: expected 1 or 2 camera names, found {list(self.cameras)}")
        if not 16 <= self.image_size <= 512:
            raise CapvectorError(f"image_size: expected 16..512, found {self.image_size}")


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


class SimEnv:
    """reset(seed, perturbation) → observation; step(action) → (observation | None, success, done).

    `raw_obs` (39-d, privileged: objects and goal) is for experts and logging only.
    """

    def __init__(self, task: str, config: SimConfig = SimConfig()) -> None:
        self.task, self.config = task, config
        self.instruction = INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))
        self.mw = _make_metaworld(task)
        self.model, self.data = self.mw.model, self.mw.data
        self.rig = CameraRig(self.model, config.cameras, config.image_size)
        self._orig = {k: np.array(getattr(self.model, k)) for k in
                      ("cam_pos", "cam_quat", "light_diffuse", "light_pos", "mat_rgba", "geom_rgba")}
        self._orig_head = np.array(self.model.vis.headlight.diffuse)
        self.raw_obs = np.zeros(39)
        self.steps = 0
        self.reward = 0.0  # MetaWorld's dense reward of the last step

    def reset(self, seed: int, perturbation: Perturbation | Scene | None = None) -> np.ndarray:
        """New episode: layout from `seed`; the scene's perturbations drawn from the same seed (or, for a fixed
        scene, from its own). Returns raw_obs."""
        streams = as_scene(perturbation).streams(seed)
        for k, v in self._orig.items():
            getattr(self.model, k)[:] = v
        self.model.vis.headlight.diffuse[:] = self._orig_head
        for part, rng in streams:
            apply_to_model(self.model, part, rng, self.rig.camera_ids)
        self.rig.extra_geoms = [g for part, rng in streams for g in distractor_geoms(part, rng)]
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
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise CapvectorError(f"action: expected shape (4,), found {action.shape}")
        if not np.all(np.isfinite(action)):
            raise CapvectorError(f"action: non-finite values {action.tolist()}")
        self.raw_obs, reward, _, _, info = self.mw.step(np.clip(action, -1.0, 1.0))
        self.reward = float(reward)
        self.steps += 1
        success = bool(info["success"] > 0)
        return success, success or self.steps >= self.config.max_steps

    def proprio(self) -> np.ndarray:
        return self.raw_obs[:4].astype(np.float32)

    def observation(self) -> dict[str, Any]:
        """The policy's view: image (V,3,H,W) uint8, proprio (4,), instruction, task."""
        return {"image": self.rig.rgb(self.data), "proprio": self.proprio(), "instruction": self.instruction,
                "task": self.task}

    def geometry(self) -> dict[str, np.ndarray]:
        """Depth (V,H,W), intrinsics (V,3,3), cam_to_world (V,4,4): for the geometric teacher only."""
        return {"depth": self.rig.depth(self.data), "intrinsics": self.rig.intrinsics(),
                "cam_to_world": self.rig.cam_to_world(self.data)}

    def close(self) -> None:
        self.rig.close()
        self.mw.close()
