"""Checkpoint IO: lazy reading of any checkpoint layout, streaming atomic writing."""

from capvector.io.atomic import AtomicOutputDir
from capvector.io.checkpoint import Checkpoint, TensorInfo
from capvector.io.writer import (
    BackgroundWriter,
    BufferPool,
    ShardedWriter,
    ShardPlan,
    parse_size,
    plan_resharded,
)

__all__ = [
    "AtomicOutputDir",
    "BackgroundWriter",
    "BufferPool",
    "Checkpoint",
    "ShardPlan",
    "ShardedWriter",
    "TensorInfo",
    "parse_size",
    "plan_resharded",
]
