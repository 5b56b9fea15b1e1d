"""Scripted expert policies behind the `Policy` interface (closed loop: chunks of length 1): MetaWorld's own, and
ours for the robosuite tasks (`robosuite_experts`)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from capvector.errors import CapvectorError
from capvector.sim.base import TaskEnv
from capvector.sim.tasks import ROBOSUITE_TASKS

# Tasks whose scripted policy's class name does not follow from the task name.
_POLICY_NAMES = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def expert_for(task: str):
    """The scripted policy object (`get_action(raw_obs)`) for a task name like 'door-open-v3' or 'rs-lift-panda'."""
    if task in ROBOSUITE_TASKS:
        from capvector.sim import robosuite_experts

        return robosuite_experts.expert_for(task)
    import metaworld.policies as mp

    name = _POLICY_NAMES.get(task) or (
        "Sawyer" + "".join(p.capitalize() for p in re.sub(r"-v3$", "", task).split("-")) + "V3Policy")
    cls = getattr(mp, name, None)
    if cls is None:
        raise CapvectorError(f"task {task!r}: no scripted expert {name} in metaworld.policies")
    return cls()


class ScriptedExpert:
    """Reads privileged state through the env handle given by `bind`; optional Gaussian action noise."""

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.env: TaskEnv | None = None
        self._policies: dict[str, Any] = {}

    def bind(self, env: TaskEnv) -> None:
        self.env = env

    def reset(self) -> None:
        pass

    def clean_action(self) -> np.ndarray:
        """The expert's noise-free action for the bound env's current state."""
        if self.env is None:
            raise CapvectorError("ScriptedExpert: call bind(env) before act()")
        task = self.env.task
        if task not in self._policies:
            self._policies[task] = expert_for(task)
        with warnings.catch_warnings():
            # MetaWorld warns when its controller gains exceed the action range; we clip just below.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self._policies[task].get_action(self.env.raw_obs)
        return np.clip(action, -1, 1).astype(np.float32)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        a = self.clean_action()
        if self.noise > 0:
            a = np.clip(a + self.rng.normal(scale=self.noise, size=4), -1, 1).astype(np.float32)
        return a[None]
