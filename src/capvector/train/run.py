"""Run one training job: the one path the `train` command, the demo pipeline and pretraining take.

The caller's torch thread count is set for the run here and restored afterwards, so a `Trainer` never changes
that process-wide setting behind its caller's back (the pipeline runs many trainings in one process).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from capvector.policy import PolicyConfig
from capvector.train.config import TrainConfig, cli_field
from capvector.train.trainer import Trainer, TrainResult


@dataclass(frozen=True)
class OrthSettings:
    """The orthogonal regulariser to attach: a capability vector and `OrthogonalRegularizer.from_vector`'s options."""

    vector: str | Path = cli_field(MISSING, "Capability vector for the orthogonal regulariser.", path=True)
    weight: float = cli_field(1e-4, "λ_orth.")
    mode: str = cli_field("auto", "auto | exact | factored | lora (see docs/orthogonal.md).")
    rank: int = cli_field(16, "k of the factored / LoRA forms.")

    def options(self) -> dict[str, float | int | str]:
        """The options without the vector (which a pipeline stage fingerprints through its dependencies)."""
        return {"weight": self.weight, "mode": self.mode, "rank": self.rank}


def run_training(cfg: TrainConfig, data: Dataset, *, orth: OrthSettings | None = None,
                 policy_config: PolicyConfig | None = None, resume: bool = True) -> TrainResult:
    """Train `cfg` on `data` (from `cfg.init`, else a fresh policy of `policy_config`), with the orthogonal
    regulariser when `orth` is given; resumes from the run directory's checkpoints unless `resume` is False."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        trainer = Trainer(cfg, data, policy_config=policy_config)
        if orth is not None:
            from capvector.orth import OrthogonalRegularizer

            trainer.add_regularizer("orth", OrthogonalRegularizer.from_vector(trainer.model, orth.vector,
                                                                              **orth.options()))
        return trainer.train(resume=resume)
    finally:
        torch.set_num_threads(threads)
