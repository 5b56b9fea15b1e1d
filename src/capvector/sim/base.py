"""What every simulated task env shares, whichever simulator runs it (MetaWorld in `env.py`, robosuite in
`robosuite_env.py`): the settings, the camera rig on the env's own MjModel/MjData, scene perturbations applied to
that model and undone at the next reset, action checks, and the policy's view of a state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from capvector.errors import CapvectorError
from capvector.sim.perturb import Perturbation, Scene, Table, apply_to_model, as_scene, distractor_geoms
from capvector.sim.render import CameraRig

_RESTORED = ("cam_pos", "cam_quat", "light_diffuse", "light_pos", "mat_rgba", "geom_rgba")


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


def checked_action(action: np.ndarray) -> np.ndarray:
    """A 4-d finite action (xyz delta, gripper) as float32 clipped to [-1, 1]; anything else is a one-line error."""
    action = np.asarray(action, dtype=np.float32)
    if action.shape != (4,):
        raise CapvectorError(f"action: expected shape (4,), found {action.shape}")
    if not np.all(np.isfinite(action)):
        raise CapvectorError(f"action: non-finite values {action.tolist()}")
    return np.clip(action, -1.0, 1.0)


class TaskEnv:
    """reset(seed, perturbation) → raw_obs; step(action) → (success, done); observation(); geometry(); close().

    `raw_obs` is the privileged 39-d state in MetaWorld's layout (hand xyz, gripper opening, objects, previous
    frame, goal) for experts, teachers and logging only. Subclasses set `model`, `data`, call `_init_rig` and
    implement `reset`, `step`, `proprio` and `_close_sim`.
    """

    task: str
    config: SimConfig
    instruction: str
    model: mujoco.MjModel
    data: mujoco.MjData
    rig: CameraRig
    table: Table = Table()  # where distractors stand, in world coordinates

    def _init_rig(self, cameras: tuple[str, ...], frame: np.ndarray | None = None) -> None:
        """The camera rig and the model values a perturbation may edit (restored at every reset). A rig that cannot
        be built (an unknown camera) closes the simulator the subclass opened, so a failed env leaks nothing."""
        try:
            self.rig = CameraRig(self.model, cameras, self.config.image_size, frame)
        except CapvectorError:
            self._close_sim()
            raise
        self._orig = {k: np.array(getattr(self.model, k)) for k in _RESTORED}
        self._orig_head = np.array(self.model.vis.headlight.diffuse)
        self.raw_obs = np.zeros(39)
        self.steps = 0
        self.reward = 0.0  # the simulator's reward of the last step

    def _apply_scene(self, seed: int, perturbation: Perturbation | Scene | None) -> list[tuple[Perturbation,
                                                                                             np.random.Generator]]:
        """Restore the model, apply the scene's model-side parts and distractors; returns the streams for the rest
        (init_noise, which the subclass applies by stepping)."""
        streams = as_scene(perturbation).streams(seed)
        for k, v in self._orig.items():
            getattr(self.model, k)[:] = v
        self.model.vis.headlight.diffuse[:] = self._orig_head
        for part, rng in streams:
            apply_to_model(self.model, part, rng, self.rig.camera_ids)
        self.rig.extra_geoms = [g for part, rng in streams for g in distractor_geoms(part, rng, self.table)]
        return streams

    def reset(self, seed: int, perturbation: Perturbation | Scene | None = None) -> np.ndarray:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[bool, bool]:
        raise NotImplementedError

    def proprio(self) -> np.ndarray:
        raise NotImplementedError

    def _close_sim(self) -> None:
        raise NotImplementedError

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
        self._close_sim()


def make_env(task: str, config: SimConfig | None = None) -> TaskEnv:
    """The env for a task name: robosuite's for the `rs-…` tasks of `tasks.ROBOSUITE_TASKS`, else MetaWorld's."""
    from capvector.sim.tasks import ROBOSUITE_TASKS

    if task in ROBOSUITE_TASKS:
        from capvector.sim.robosuite_env import RobosuiteEnv

        return RobosuiteEnv(task, config)
    from capvector.sim.env import SimEnv

    return SimEnv(task, config)
