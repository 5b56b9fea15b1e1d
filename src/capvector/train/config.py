"""Training run configuration, resolved and saved as `config.json` in the run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from capvector.errors import CapvectorError
from capvector.policy.presets import LORA_TARGETS

TUNERS = ("full", "lora", "gse", "peft")
# Fields that may differ between a run and its resumption; everything else must match.
RESUMABLE_CHANGES = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "progress", "threads",
                     "num_workers", "snapshot_steps", "log_with", "logging_dir")


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

    output_dir: str = "runs/train"
    init: str | None = None  # policy directory to start from; None = fresh init from `seed`
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    lr_action_expert: float | None = None  # None: same as lr (GSE's reference uses 10× lr for the head)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    tuner: str = "full"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    gse_options: dict = field(default_factory=dict)
    also_train: list[str] = field(default_factory=list)
    aux_weight: float = 0.0
    aux_layer: int | None = None
    aux_hidden: int | None = None
    aux_layernorm: bool = True
    teacher: str = "geometry"
    teacher_path: str | None = None
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    snapshot_steps: list[int] = field(default_factory=list)  # also export the policy at these steps
    num_workers: int = 0
    threads: int | None = None
    progress: bool = True
    log_with: str | list[str] | None = None
    logging_dir: str | None = None

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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CapvectorError(f"{source}: unknown keys {unknown}")
        return cls(**data)
