"""`capvector train`: the command over `Trainer`.

Run it on several processes or a GPU with `accelerate launch -m capvector.cli train ...`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from capvector.commands.config_options import with_config_options
from capvector.errors import CapvectorError
from capvector.io.jsonfile import read_json_object
from capvector.policy import config_from_dict
from capvector.policy.registry import TYPE_KEY
from capvector.train.config import TrainConfig
from capvector.train.datasets import training_dataset
from capvector.train.run import OrthSettings, run_training


@with_config_options(OrthSettings, into="orth", prefix="orth_")
@with_config_options(TrainConfig)
def train_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (config, metrics, checkpoints).")],
    data: Annotated[str, typer.Option(help="Dataset directory, or 'synthetic[:N]'.")] = "synthetic",
    config: Annotated[Path | None, typer.Option(help="JSON file of TrainConfig fields; flags override it.")] = None,
    overrides: dict[str, Any] | None = None,  # every TrainConfig field is an option here; those given
    orth: dict[str, Any] | None = None,  # OrthSettings fields as --orth-* options; those given
    policy: Annotated[str | None, typer.Option(help="Fresh policy: tiny-vla (default) | tiny-pi0.")] = None,
    width: Annotated[int | None, typer.Option(help="Fresh policy: trunk width.")] = None,
    depth: Annotated[int | None, typer.Option(help="Fresh policy: trunk layers.")] = None,
    cameras: Annotated[int | None, typer.Option(help="Fresh policy: cameras (1 or 2).")] = None,
    embedder: Annotated[str | None, typer.Option(help="Fresh policy: minilm | hash.")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Ignore checkpoints already in the run dir.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a tiny policy: full / LoRA / GSE, optional spatial alignment and orthogonal regulariser."""
    fields = read_json_object(config, "train config") if config else {}
    fields.update(overrides or {})
    fields["output_dir"] = str(output)
    fields.setdefault("progress", sys.stderr.isatty())
    cfg = TrainConfig.from_dict(fields, source=str(config) if config else "train options")
    policy_fields = {TYPE_KEY: policy, "width": width, "depth": depth, "num_cameras": cameras, "embedder": embedder}
    policy_fields = {k: v for k, v in policy_fields.items() if v is not None}
    if cfg.init:
        from capvector.policy import load_policy

        if policy_fields:
            raise CapvectorError(f"--init {cfg.init} fixes the architecture; drop {sorted(policy_fields)}")
        policy_cfg = load_policy(cfg.init).config
    else:
        if policy_fields.get("width") and "heads" not in policy_fields:
            policy_fields["heads"] = max(1, policy_fields["width"] // 32)
        policy_cfg = config_from_dict(policy_fields, source="train options")
    if orth and "vector" not in orth:
        raise CapvectorError(f"{', '.join('--orth-' + k for k in sorted(orth))} set but no --orth-vector to regularise "
                             "against")
    settings = OrthSettings(**orth) if orth else None
    result = run_training(cfg, training_dataset(data, policy_cfg, cfg.seed), orth=settings, policy_config=policy_cfg,
                          resume=not no_resume)
    summary = {"run_dir": str(result.run_dir), "policy": str(result.policy_dir), "steps": result.steps,
               "final_loss": result.final_loss}
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; policy in {result.policy_dir}")
