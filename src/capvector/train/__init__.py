"""Training: one trainer for full / LoRA / PEFT-tuner fine-tuning with optional spatial alignment and regularisers.

The `capvector train` command lives in `capvector.commands.train`; importing this library does not load typer.
"""

from capvector.train.config import TrainConfig
from capvector.train.datasets import training_dataset
from capvector.train.export import load_trained, snapshot_dir
from capvector.train.order import global_batch
from capvector.train.policies import open_policy
from capvector.train.run import OrthSettings, run_training
from capvector.train.synthetic import SyntheticDemoDataset
from capvector.train.trainer import (
    Trainer,
    TrainResult,
    lr_factor,
    tuner_aux_loss,
)

__all__ = [
    "OrthSettings",
    "SyntheticDemoDataset",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "global_batch",
    "load_trained",
    "lr_factor",
    "open_policy",
    "run_training",
    "snapshot_dir",
    "training_dataset",
    "tuner_aux_loss",
]

