"""Embedded simulated benchmark: MetaWorld tasks, fast off-screen rendering, experts, perturbations, evaluation."""

from capvector.sim import _gl  # noqa: F401  (must run before mujoco is imported)
from capvector.sim.env import SimConfig, SimEnv
from capvector.sim.experts import ScriptedExpert
from capvector.sim.perturb import PERTURBATIONS, Perturbation, parse_perturbation
from capvector.sim.policy_api import Policy
from capvector.sim.tasks import INSTRUCTIONS, SPLITS, SPLITS_VERSION, split_tasks

__all__ = ["INSTRUCTIONS", "PERTURBATIONS", "SPLITS", "SPLITS_VERSION", "Perturbation", "Policy",
           "ScriptedExpert", "SimConfig", "SimEnv", "parse_perturbation", "split_tasks"]
