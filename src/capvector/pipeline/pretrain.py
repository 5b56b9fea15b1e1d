"""Pretraining a tiny policy on the pretraining split: the recipe behind the shipped θ_pre, as cached stages.

`capvector pretrain -o DIR` collects scripted-expert demos of the pretraining tasks, trains a fresh policy
with plain SFT, evaluates it by rollouts and writes DIR (config.json, model.safetensors, recipe.json with
the settings, data summary and success rates). Regenerating the shipped weights:
`capvector pretrain -o src/capvector/assets/tiny_vla_pretrained --overwrite` (the tiny pi0's:
`capvector pretrain --policy tiny-pi0 -o src/capvector/assets/tiny_pi0_pretrained --overwrite`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.io.atomic import AtomicOutputDir
from capvector.pipeline.stages import Stage, StageRunner
from capvector.pipeline.work import DATASET, Collect, Evaluate, Train, TrainSettings, read_eval, stderr_is_tty
from capvector.policy import config_from_dict
from capvector.policy.registry import DEFAULT_TYPE, TYPE_KEY
from capvector.train import run_training
from capvector.train.config import cli_field


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining recipe; each field but `policy` is an option of `capvector pretrain`."""

    episodes: int = cli_field(40, "Demos per pretraining task.")
    noise: float = cli_field(0.1, "σ of the Gaussian noise on the experts' executed actions (recorded actions are "
                                  "clean).")
    collect_seed: int = cli_field(0, "Seed of the demo collection.")
    steps: int = cli_field(4000, "Training steps.")
    batch_size: int = cli_field(64, "Batch size.")
    lr: float = cli_field(5e-4, "Peak learning rate (warmup, then cosine).")
    warmup_steps: int = cli_field(200, "Linear warmup steps.")
    seed: int = cli_field(0, "Seed of init and data order.")
    policy: dict[str, Any] = cli_field({"embedder": "minilm"}, "Config fields of the fresh policy (`policy_type` "
                                       "picks the architecture, absent: the tiny VLA; its image and patch size are the "
                                       "command's --image-size and --patch-size).", cli=False)
    eval_episodes: int = cli_field(10, "Rollouts per pretraining task.")
    eval_seed: int = cli_field(1000, "Base seed of the rollouts.")
    max_steps: int = cli_field(150, "Step limit of a rollout.")
    workers: int = cli_field(2, "Rollout worker processes.")
    threads: int = cli_field(2, "torch CPU threads while training.")


@dataclass(frozen=True)
class _FreshTrain(Train):
    """Train from a fresh policy of the given shape (the pretraining run has no `init`)."""

    policy: dict[str, Any] = field(default_factory=dict)  # config fields, as `PretrainConfig` names them

    def __post_init__(self) -> None:
        config_from_dict(self.policy, source="pretrain policy")  # a wrong field fails before any stage runs

    def params(self) -> dict[str, Any]:
        params = super().params()
        return {**params, "train": {**params["train"], "policy": self.policy}}

    def __call__(self, directory: Path) -> dict[str, Any]:
        from capvector.data import open_dataset

        cfg = replace(self.train.config, output_dir=str(directory), progress=stderr_is_tty())
        result = run_training(cfg, open_dataset(self.data), policy_config=config_from_dict(self.policy))
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)
        return {"steps": result.steps, "final_loss": result.final_loss}


def pretrain(output: str | Path, cfg: PretrainConfig, run_dir: str | Path = "runs/pretrain",
             overwrite: bool = False, log: Any = print) -> dict[str, Any]:
    """Run (or resume) the pretraining stages under `run_dir` and write the policy directory `output`."""
    output, run_dir = Path(output), Path(run_dir)
    if output.exists() and not overwrite:
        raise CapvectorError(f"{output} exists; pass --overwrite to replace it")
    image_size = config_from_dict(cfg.policy, source="pretrain policy").image_size
    kind = cfg.policy.get(TYPE_KEY, DEFAULT_TYPE)
    train_label = "pretrain the tiny VLA" if kind == DEFAULT_TYPE else f"pretrain the {kind} policy"
    runner = StageRunner(run_dir, log=log)
    data = Collect("pretrain", cfg.episodes, cfg.collect_seed, cfg.noise, image_size)
    settings = TrainSettings.of(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                                seed=cfg.seed, threads=cfg.threads, log_every=50, checkpoint_every=500)
    train = _FreshTrain("", str(runner.directory("data/pretrain") / DATASET), settings,
                        policy=dict(cfg.policy))
    evaluate = Evaluate(str(runner.directory("train")), "pretrain", cfg.eval_episodes, cfg.eval_seed,
                        cfg.max_steps, ("none",), cfg.workers)
    stages = [
        Stage("data/pretrain", data, data.params(), (), True, "collect pretraining demos"),
        Stage("train", train, train.params(), ("data/pretrain",), True, train_label),
        Stage("eval/pretrain", evaluate, evaluate.params(), ("train",), False, "rollouts on the pretraining tasks"),
    ]
    runner.run(stages)
    result = read_eval(runner.directory("eval/pretrain"))
    recipe = {"pretrain_config": asdict(cfg), "data": runner.summary("data/pretrain"),
              "train": runner.summary("train"),
              "eval": {"overall": result["overall"],
                       "per_task": {r["task"]: r["pc_success"] for r in result["per_task"]}},
              "regenerate": _regenerate_command(output, cfg)}
    with AtomicOutputDir(output, overwrite=True) as tmp:
        shutil.copytree(runner.directory("train") / "policy", tmp, dirs_exist_ok=True)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe


def _regenerate_command(output: Path, cfg: PretrainConfig) -> str:
    """The command that reruns this recipe: the options that differ from the defaults and change the result."""
    options = []
    kind = cfg.policy.get(TYPE_KEY, DEFAULT_TYPE)
    if kind != DEFAULT_TYPE:
        options.append(f"--policy {kind}")
    if cfg.threads != PretrainConfig().threads:  # float reductions differ with the thread count
        options.append(f"--threads {cfg.threads}")
    return " ".join(["capvector pretrain", *options, f"-o {output} --overwrite"])
