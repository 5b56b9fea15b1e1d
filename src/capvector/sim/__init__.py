"""Embedded simulated benchmark: MetaWorld tasks and a second robot's (robosuite's Panda, `robosuite_env.py`), fast
off-screen rendering, experts, perturbations, evaluation; and the LIBERO evaluator (`libero.py`, the [libero]
extra) beside it, with the same policy interface and results.

The names below load on first use, so submodules that need no simulator (`tasks`, `perturb`, `policy_api`) import
without the [sim] extra.
"""

from importlib import import_module
from typing import Any

from capvector.sim import _gl  # noqa: F401  (must run before mujoco is imported)

_EXPORTS = {
    "SimConfig": "capvector.sim.base", "SimEnv": "capvector.sim.env", "TaskEnv": "capvector.sim.base",
    "make_env": "capvector.sim.base", "RobosuiteEnv": "capvector.sim.robosuite_env",
    "ScriptedExpert": "capvector.sim.experts",
    "PERTURBATIONS": "capvector.sim.perturb", "Perturbation": "capvector.sim.perturb",
    "parse_perturbation": "capvector.sim.perturb", "Scene": "capvector.sim.perturb",
    "parse_scene": "capvector.sim.perturb",
    "Policy": "capvector.sim.policy_api",
    "INSTRUCTIONS": "capvector.sim.tasks", "ROBOSUITE_TASKS": "capvector.sim.tasks", "SPLITS": "capvector.sim.tasks",
    "SPLITS_VERSION": "capvector.sim.tasks",
    "split_tasks": "capvector.sim.tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'capvector.sim' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
