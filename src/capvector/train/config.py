"""Training run configuration, resolved and saved as `config.json` in the run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from capvector.errors import CapvectorError, reject_unknown_keys
from capvector.policy.presets import LORA_TARGETS

TUNERS = ("full", "lora", "gse", "peft")
# Fields that may differ between a run and its resumption; everything else must match.
RESUMABLE_CHANGES = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "progress", "threads",
                     "num_workers", "snapshot_steps", "log_with", "logging_dir")


def cli_field(default: Any, help: str, *, cli: bool = True, flag: str | None = None, metavar: str | None = None,
              path: bool = False) -> Any:
    """A config field with its documentation as metadata, from which a command generates its option
    (`capvector.commands.config_options`): `help`, and where needed `flag` (the option's name), `metavar`,
    `path` (shown and parsed as a path), `cli=False` (no option: a value with no command-line form)."""
    meta = {"help": help, "cli": cli, "flag": flag, "metavar": metavar, "path": path}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that determines a run. Two runs with equal configs (and data) see the same batches in the same order.

    tuner: "full" (every policy parameter), "lora" (PEFT LoRA on the trunk's linear layers), "gse"
    (`capvector.gse.GSEConfig(target_modules=lora_targets, **gse_options)` through PEFT) or "peft"
    (any PEFT config object passed to the Trainer).
    `also_train`: globs of base-model parameter names kept trainable beside the adapters (e.g. "action_expert.*").
    `aux_weight` > 0 turns on spatial alignment at trunk layer `aux_layer` (default ≈ 3/4 of the depth).
    `log_with`: accelerate trackers that also get the metrics ("tensorboard", "wandb", "trackio", ..., or "all"
    installed); metrics.jsonl is written either way. File-based trackers write under `logging_dir`
    (default: `<output_dir>/logs`).
    """

    output_dir: str = cli_field("runs/train", "Run directory (config, metrics, checkpoints).", cli=False)
    init: str | None = cli_field(None, "Policy directory to start from (default: fresh init from the seed).",
                                 path=True)
    steps: int = cli_field(1000, "Optimiser steps.")
    batch_size: int = cli_field(64, "Global batch size.")
    lr: float = cli_field(3e-4, "Peak learning rate (warmup, then cosine).")
    lr_action_expert: float | None = cli_field(None, "Peak lr of the action expert (default: lr; GSE's reference uses "
                                                  "10x lr for the head).")
    weight_decay: float = cli_field(0.01, "AdamW weight decay.")
    beta1: float = cli_field(0.9, "AdamW beta1.")
    beta2: float = cli_field(0.95, "AdamW beta2.")
    warmup_steps: int = cli_field(50, "Linear warmup steps.")
    min_lr_ratio: float = cli_field(0.1, "Learning rate at the last step, as a fraction of the peak.")
    grad_clip: float = cli_field(1.0, "Gradient-norm clip (0: off).")
    seed: int = cli_field(0, "Seed of init and data order.")
    tuner: str = cli_field("full", "full | lora | gse (peft: a PEFT config given in Python).")
    lora_r: int = cli_field(16, "LoRA rank.")
    lora_alpha: int = cli_field(16, "LoRA alpha.")
    lora_dropout: float = cli_field(0.0, "LoRA dropout.")
    lora_targets: list[str] = cli_field(list(LORA_TARGETS), "Module name the LoRA / GSE adapters wrap (repeatable).",
                                     metavar="<name>")
    gse_options: dict = cli_field({}, "GSEConfig options beside target_modules (tuner gse).", cli=False)
    also_train: list[str] = cli_field([], "Base-parameter glob to train too (repeatable).", metavar="<glob>")
    aux_weight: float = cli_field(0.0, "α of the auxiliary loss (0 = off).")
    aux_layer: int | None = cli_field(None, "Trunk layer the auxiliary loss reads (visual tokens; action queries for "
                                         "subgoal; thought tokens for latent-reasoning; default ≈ 3/4 of the "
                                         "depth).")
    aux_hidden: int | None = cli_field(None, "Hidden width of the auxiliary projector (default: the larger of policy "
                                          "and teacher width).")
    aux_layernorm: bool = cli_field(True, "Layer-normalise the hidden states before the auxiliary projector.")
    teacher: str = cli_field("geometry", "foundation | geometry | geometry-residual | precomputed (spatial alignment) "
                                      "| subgoal (plan prediction) | latent-reasoning (plan in thought tokens).")
    teacher_path: str | None = cli_field(None, "Feature file/dir (precomputed) or teacher dir (foundation).", path=True)
    log_every: int = cli_field(10, "Steps between metric records.")
    checkpoint_every: int = cli_field(0, "Steps between checkpoints (0: final only).")
    keep_checkpoints: int = cli_field(2, "Checkpoints kept (0: all).")
    snapshot_steps: list[int] = cli_field([], "Also export the policy at this step to snapshots/step_N/ (repeatable).",
                                       flag="--snapshot-step", metavar="<int>")
    num_workers: int = cli_field(0, "DataLoader worker processes.")
    threads: int | None = cli_field(None, "torch CPU threads.")
    progress: bool = cli_field(True, "Show a progress bar (on a terminal).")
    log_with: str | list[str] | None = cli_field(None, "Also log metrics to this accelerate tracker: tensorboard, "
                                                       "wandb, trackio, ... or all (repeatable; metrics.jsonl is "
                                                       "always written).", metavar="<name>")
    logging_dir: str | None = cli_field(None, "Where file-based trackers write (default: OUTPUT/logs).", path=True)

    def __post_init__(self) -> None:
        if self.tuner not in TUNERS:
            raise CapvectorError(f"train config: tuner must be one of {TUNERS}, found {self.tuner!r}")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise CapvectorError(f"train config: {name} must be positive, found {getattr(self, name)}")
        if self.lr <= 0:
            raise CapvectorError(f"train config: lr must be positive, found {self.lr}")
        if self.aux_weight < 0:
            raise CapvectorError(f"train config: aux_weight must be >= 0, found {self.aux_weight}")
        if any(s <= 0 for s in self.snapshot_steps):
            raise CapvectorError(f"train config: snapshot_steps must be positive, found {self.snapshot_steps}")
        if not (self.log_with is None or isinstance(self.log_with, str) or
                (isinstance(self.log_with, list) and all(isinstance(n, str) for n in self.log_with))):
            raise CapvectorError(f"train config: log_with must be a tracker name or a list of them, "
                                 f"found {self.log_with!r}")
        if self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise CapvectorError("train config: checkpoint_every and warmup_steps must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "train config") -> TrainConfig:
        reject_unknown_keys(data, cls, source, "train config")
        return cls(**data)
