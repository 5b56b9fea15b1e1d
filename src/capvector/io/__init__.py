"""Checkpoint IO: lazy reading of any checkpoint layout, streaming atomic writing."""

from capvector.io.checkpoint import Checkpoint, TensorInfo
from capvector.io.writer import (
    AtomicOutputDir,
    BackgroundWriter,
    ShardedWriter,
    ShardPlan,
    parse_size,
    plan_resharded,
)

__all__ = [
    "AtomicOutputDir",
    "BackgroundWriter",
    "Checkpoint",
    "ShardPlan",
    "ShardedWriter",
    "TensorInfo",
    "parse_size",
    "plan_resharded",
]
