"""The stage bodies of the demo recipe: collect, train, extract, merge, evaluate. Each writes into the directory
`StageRunner` gives it and returns a small JSON summary; the recipe (`recipe.py`) wires them into a graph."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.train.config import TrainConfig
from capvector.train.run import OrthSettings, run_training

DATASET = "dataset"  # sub-directory of a collect stage


@dataclass(frozen=True)
class Collect:
    split: str
    episodes: int
    seed: int
    noise: float
    image_size: int = 64
    camera: str = "corner3"
    scene: str | None = None  # a scene label (capvector.sim.perturb); None = clean

    def params(self) -> dict[str, Any]:
        # Unset, the scene stays out of the fingerprint, so runs recorded before scenes stay valid.
        return {"kind": "collect", **{k: v for k, v in self.__dict__.items() if k != "scene" or v is not None}}

    def __call__(self, directory: Path) -> dict[str, Any]:
        from capvector.data.collect import collect
        from capvector.sim.env import SimConfig
        from capvector.sim.perturb import parse_scene
        from capvector.sim.tasks import split_tasks

        manifest = collect(directory / DATASET, split_tasks(self.split), self.episodes, seed=self.seed,
                           noise=self.noise, sim=SimConfig(image_size=self.image_size, cameras=(self.camera,)),
                           progress=stderr_is_tty(), split=self.split,
                           perturbation=parse_scene(self.scene) if self.scene else None)
        eps = manifest["episodes"]
        return {"episodes": len(eps), "steps": sum(e["length"] for e in eps), "collect_s": manifest["collect_s"]}


@dataclass(frozen=True)
class TrainSettings:
    """A stage's training settings: a `TrainConfig` built when the recipe is (a misspelt or invalid field fails
    there, before any stage runs), and the names of the fields the recipe chose, which fingerprint the stage."""

    config: TrainConfig
    chosen: tuple[str, ...]

    @classmethod
    def of(cls, **fields: Any) -> TrainSettings:
        return cls(TrainConfig.from_dict(fields, source="pipeline train settings"), tuple(sorted(fields)))

    def params(self) -> dict[str, Any]:
        return {name: getattr(self.config, name) for name in self.chosen}


@dataclass(frozen=True)
class Train:
    """One training run; `init` and `data` are directories of earlier stages (or shipped weights)."""

    init: str
    data: str
    train: TrainSettings  # output_dir, init and progress are set when the stage runs
    orth: OrthSettings | None = None

    @property
    def cores(self) -> int:
        return self.train.config.threads or os.cpu_count() or 1

    def params(self) -> dict[str, Any]:
        # Paths are fingerprinted through the stage's dependencies, not as strings.
        return {"kind": "train", "train": self.train.params(), "orth": self.orth.options() if self.orth else None}

    def __call__(self, directory: Path) -> dict[str, Any]:
        import torch

        from capvector.data import open_dataset

        cfg = replace(self.train.config, output_dir=str(directory), init=self.init, progress=stderr_is_tty())
        result = run_training(cfg, open_dataset(self.data), orth=self.orth)
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # resume state: not needed once done
        resolved = json.loads((directory / "config.json").read_text())  # the run's record of what it trained
        # The kernel set torch dispatched to (AVX2, AVX512, …): the same stage trained on another CPU differs in
        # its last bits from the first step, which training amplifies like a change of seed (docs/demo.md)
        return {"steps": result.steps, "final_loss": result.final_loss,
                "trainable_parameters": resolved["trainable_parameters"],
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), **_speed(result.history)}


def _speed(history: list[dict]) -> dict[str, float]:
    """Training throughput over the whole run after the first logged interval (which includes start-up).

    Every interval counts with its length, so one stalled interval moves the figure by its share of the run and
    not, as a median over few intervals could, all the way."""
    steps = seconds = 0.0  # in units of one batch: the batch size is constant within a run and cancels
    for before, rec in zip(history, history[1:], strict=False):
        rate, n = rec.get("samples_per_s"), rec["step"] - before["step"]
        if rate and n > 0:
            steps, seconds = steps + n, seconds + n / rate
    return {"samples_per_s": steps / seconds} if seconds > 0 else {}


@dataclass(frozen=True)
class Extract:
    sft: str
    aux: str
    pretrained: str
    preset: str | None

    def params(self) -> dict[str, Any]:
        return {"kind": "extract", "preset": self.preset}

    def __call__(self, directory: Path) -> dict[str, Any]:
        from capvector.vectors.extract import extract

        out = directory / "vector"
        result = extract(self.sft, self.aux, out, pretrained=self.pretrained, preset=self.preset, progress=False)
        return {"tensors": result.tensors, "norm": result.norm}


@dataclass(frozen=True)
class Merge:
    """θ_pre + Σ_i λ_i·τ_i (one vector for θ_meta; several for the vector-combination study, added or combined
    TIES/DARE-style: `combine` is a `capvector merge --combine` method, `density` its kept fraction)."""

    base: str
    vectors: tuple[str, ...]
    weights: tuple[float, ...]
    combine: str = "sum"
    density: float | None = None

    def params(self) -> dict[str, Any]:
        # One vector keeps the fingerprint runs recorded before several were possible.
        if len(self.vectors) == 1:
            return {"kind": "merge", "weight": self.weights[0]}
        combine = {} if self.combine == "sum" else {"combine": self.combine, "density": self.density}
        return {"kind": "merge", "weights": list(self.weights), **combine}

    def __call__(self, directory: Path) -> dict[str, Any]:
        from capvector.vectors.combine import Combine
        from capvector.vectors.merge import VectorWeight, merge

        recipe = merge(self.base, [VectorWeight(v, w) for v, w in zip(self.vectors, self.weights, strict=True)],
                       directory / "policy", progress=False, combine=Combine(self.combine, self.density))
        return {"merged_tensors": recipe["merged_tensors"], "total_tensors": recipe["total_tensors"]}


@dataclass(frozen=True)
class Evaluate:
    """Rollouts of one policy on a split under one or more variants (scene labels); writes `eval.json` (eval_info)."""

    policy: str
    split: str
    episodes: int
    seed: int
    max_steps: int
    perturbations: tuple[str, ...] = ("none",)
    workers: int = 2
    videos: int = 0

    @property
    def cores(self) -> int:
        return max(1, self.workers)

    def params(self) -> dict[str, Any]:
        return {"kind": "eval", **{k: v for k, v in self.__dict__.items() if k not in ("policy", "workers")}}

    def __call__(self, directory: Path) -> dict[str, Any]:
        from capvector.io.atomic import atomic_write_json
        from capvector.sim.env import SimConfig
        from capvector.sim.evaluate import EvalConfig, evaluate
        from capvector.sim.perturb import parse_scene
        from capvector.sim.tasks import split_tasks
        from capvector.train import load_trained

        policy = load_trained(self.policy)
        cfg = EvalConfig(tasks=tuple(split_tasks(self.split)), episodes=self.episodes, seed=self.seed,
                         perturbations=tuple(parse_scene(p) for p in self.perturbations),
                         workers=self.workers, videos=self.videos,
                         # render at the resolution the policy was trained for
                         sim=SimConfig(max_steps=self.max_steps, image_size=policy.config.image_size),
                         video_dir=str(directory / "videos") if self.videos else None)
        result = evaluate(policy, cfg).summary()
        atomic_write_json(directory / "eval.json", result)
        return {"pc_success": result["overall"]["pc_success"], "n_episodes": result["overall"]["n_episodes"],
                "per_variant": {k: v["pc_success"] for k, v in result["per_variant"].items()}}


def read_eval(directory: Path) -> dict[str, Any]:
    path = directory / "eval.json"
    if not path.is_file():
        raise CapvectorError(f"{path}: missing evaluation result")
    return json.loads(path.read_text())


def stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
