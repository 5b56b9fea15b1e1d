"""`capvector train`: the command over `Trainer`.

Run it on several processes or a GPU with `accelerate launch -m capvector.cli train ...`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from capvector.errors import CapvectorError
from capvector.policy import PolicyConfig
from capvector.train.config import TrainConfig
from capvector.train.datasets import training_dataset
from capvector.train.run import OrthSettings, run_training


def train_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (config, metrics, checkpoints).")],
    data: Annotated[str, typer.Option(help="Dataset directory, or 'synthetic[:N]'.")] = "synthetic",
    init: Annotated[Path | None, typer.Option(help="Policy directory to start from (default: fresh init).")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields; flags override it.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (warmup, then cosine).")] = None,
    lr_action_expert: Annotated[float | None, typer.Option(help="Peak lr of the action expert (default: lr).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of init and data order.")] = None,
    tuner: Annotated[str | None, typer.Option(help="full | lora | gse.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    also_train: Annotated[list[str] | None, typer.Option(
        metavar="<glob>", help="Base-parameter glob to train too (repeatable).")] = None,
    aux_weight: Annotated[float | None, typer.Option(help="α of the auxiliary loss (0 = off).")] = None,
    aux_layer: Annotated[int | None, typer.Option(
        help="Trunk layer the auxiliary loss reads (visual tokens; action queries for subgoal).")] = None,
    teacher: Annotated[str | None, typer.Option(
        help="foundation | geometry | geometry-residual | precomputed (spatial alignment) | subgoal (plan "
             "prediction).")] = None,
    teacher_path: Annotated[Path | None, typer.Option(
        help="Feature file/dir (precomputed) or teacher dir (foundation).")] = None,
    orth_vector: Annotated[Path | None, typer.Option(help="Capability vector for the orthogonal regulariser.")] = None,
    orth_weight: Annotated[float, typer.Option(help="λ_orth.")] = 1e-4,
    orth_mode: Annotated[str, typer.Option(help="auto | exact | factored | lora (see docs/orthogonal.md).")] = "auto",
    orth_rank: Annotated[int, typer.Option(help="k of the factored / LoRA forms.")] = 16,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints (0: final only).")] = None,
    snapshot_step: Annotated[list[int] | None, typer.Option(
        metavar="<int>", help="Also export the policy at this step to snapshots/step_N/ (repeatable).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    log_with: Annotated[list[str] | None, typer.Option(
        metavar="<name>", help="Also log metrics to this accelerate tracker: tensorboard, wandb, trackio, ... or all "
                               "(repeatable; metrics.jsonl is always written).")] = None,
    logging_dir: Annotated[Path | None, typer.Option(
        help="Where file-based trackers write (default: OUTPUT/logs).")] = None,
    width: Annotated[int | None, typer.Option(help="Fresh policy: trunk width.")] = None,
    depth: Annotated[int | None, typer.Option(help="Fresh policy: trunk layers.")] = None,
    cameras: Annotated[int | None, typer.Option(help="Fresh policy: cameras (1 or 2).")] = None,
    embedder: Annotated[str | None, typer.Option(help="Fresh policy: minilm | hash.")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Ignore checkpoints already in the run dir.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train the tiny VLA: full / LoRA / GSE, optional spatial alignment and orthogonal regulariser."""
    fields = json.loads(config.read_text()) if config else {}
    if not isinstance(fields, dict):
        raise CapvectorError(f"{config}: expected a JSON object of TrainConfig fields")
    overrides = {"steps": steps, "batch_size": batch_size, "lr": lr, "lr_action_expert": lr_action_expert,
                 "seed": seed, "tuner": tuner, "lora_r": lora_r,
                 "also_train": also_train, "aux_weight": aux_weight, "aux_layer": aux_layer, "teacher": teacher,
                 "teacher_path": str(teacher_path) if teacher_path else None, "checkpoint_every": checkpoint_every,
                 "snapshot_steps": snapshot_step,
                 "threads": threads, "init": str(init) if init else None, "log_with": log_with,
                 "logging_dir": str(logging_dir) if logging_dir else None}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields["output_dir"] = str(output)
    fields.setdefault("progress", sys.stderr.isatty())
    cfg = TrainConfig.from_dict(fields, source=str(config) if config else "train options")
    policy_fields = {"width": width, "depth": depth, "num_cameras": cameras, "embedder": embedder}
    policy_fields = {k: v for k, v in policy_fields.items() if v is not None}
    if cfg.init:
        from capvector.policy import load_policy

        if policy_fields:
            raise CapvectorError(f"--init {cfg.init} fixes the architecture; drop {sorted(policy_fields)}")
        policy_cfg = load_policy(cfg.init).config
    else:
        if policy_fields.get("width") and "heads" not in policy_fields:
            policy_fields["heads"] = max(1, policy_fields["width"] // 32)
        policy_cfg = PolicyConfig(**policy_fields)
    orth = OrthSettings(orth_vector, orth_weight, orth_mode, orth_rank) if orth_vector is not None else None
    result = run_training(cfg, training_dataset(data, policy_cfg, cfg.seed), orth=orth, policy_config=policy_cfg,
                          resume=not no_resume)
    summary = {"run_dir": str(result.run_dir), "policy": str(result.policy_dir), "steps": result.steps,
               "final_loss": result.final_loss}
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; policy in {result.policy_dir}")
