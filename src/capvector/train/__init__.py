"""Training: one trainer for full / LoRA / PEFT-tuner fine-tuning with optional spatial alignment and regularisers."""

from capvector.train.cli import open_dataset, train_command
from capvector.train.config import TrainConfig
from capvector.train.order import global_batch
from capvector.train.synthetic import SyntheticDemoDataset
from capvector.train.trainer import (
    Trainer,
    TrainResult,
    load_trained,
    lr_factor,
    snapshot_dir,
    tuner_aux_loss,
)

__all__ = [
    "SyntheticDemoDataset",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "global_batch",
    "load_trained",
    "lr_factor",
    "open_dataset",
    "snapshot_dir",
    "train_command",
    "tuner_aux_loss",
]
