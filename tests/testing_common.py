"""Helpers shared across the test folders, in a uniquely named module (no test imports a conftest, whose name every
folder shares): tiny random Llama models, the tiny VLA's config and batches, safetensors checkpoints written by the
real libraries, and the CLI run in this process (a subprocess only where a test is about signals or the real entry
point)."""

from __future__ import annotations

import faulthandler
import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file
from typer.testing import CliRunner

# the capability-vector core's Llama, and a smaller one for the regulariser's math
CORE_LLAMA = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32)
SMALL_LLAMA = dict(CORE_LLAMA, vocab_size=64, hidden_size=16, intermediate_size=32, max_position_embeddings=16)


def tiny_llama(seed: int, **sizes: int):
    """A randomly initialised `LlamaForCausalLM` of `CORE_LLAMA`'s sizes (or those given), seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**CORE_LLAMA, **sizes}))


def small_config(**sizes: object):
    """A tiny VLA's `PolicyConfig` (width 32, 2 layers, hash embedder, chunk 4), with any field overridden."""
    from capvector.policy import PolicyConfig

    return PolicyConfig(**{**dict(width=32, depth=2, heads=2, embedder="hash", chunk=4), **sizes})


def batch_of(dataset, indices: list[int]) -> dict:
    """The samples at `indices`, collated as the trainer's DataLoader does."""
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in indices])


@dataclass
class PlanRun:
    """A short trainer run with a plan objective: its loss on a fixed batch before and after, and what it left."""

    before: float
    after: float
    result: object  # the trainer's TrainResult
    rows: list[dict]  # metrics.jsonl
    trainer: object


def train_plan_objective(run_dir: Path, teacher: str, policy_config: object, part: str) -> PlanRun:
    """60 steps of aux weight 1 at layer 1 on synthetic demos with `teacher` ("subgoal" or "latent-reasoning");
    `part` is the objective's metric name. The fixed-batch loss draws the pi0's flow noise from a forked RNG seeded
    alike before and after, so the two readings compare and the training stream is untouched."""
    import json

    from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer

    ds = SyntheticDemoDataset(length=96, chunk=4, seed=3, episode_len=16)
    cfg = TrainConfig(output_dir=str(run_dir), steps=60, batch_size=16, lr=3e-3, warmup_steps=5, seed=0,
                      aux_weight=1.0, aux_layer=1, teacher=teacher, log_every=10, progress=False)
    trainer = Trainer(cfg, ds, policy_config=policy_config)
    fixed = batch_of(ds, list(range(0, 96, 6)))

    def plan_loss() -> float:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return trainer.loss_module(*trainer._prepare(fixed))[1][part].item()

    before = plan_loss()
    result = trainer.train()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return PlanRun(before, plan_loss(), result, rows, trainer)


def write_st(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """A checkpoint directory holding one `model.safetensors` with `tensors`."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors", metadata=metadata)
    return path


def _gloo_rank(rank: int, fn: Callable, init_file: str, args: tuple) -> None:
    faulthandler.enable()  # a C++ abort then prints every thread's Python stack instead of a bare SIGABRT
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        fn(rank, *args)
        dist.barrier()  # neither rank tears down while its peer still has a collective in flight
    finally:
        dist.destroy_process_group()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: gloo's worker threads can still own tensors then, and destroying them without
    # a live interpreter aborts the process (pytorch/pytorch#179291), failing a run whose results are written.
    os._exit(0)


def spawn_gloo(fn: Callable, *args: object, rendezvous: Path) -> None:
    """Run `fn(rank, *args)` in 2 CPU processes joined by gloo through a rendezvous file (no race for a TCP port)."""
    mp.spawn(_gloo_rank, args=(fn, str(rendezvous), args), nprocs=2, join=True)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> CliResult:
    """One `capvector` call in this process; an uncaught exception is re-raised, so a traceback fails the test."""
    from capvector.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(r.exit_code, r.stdout, r.stderr)


def stage_fingerprints(graph: object) -> dict[str, str]:
    """Every stage's cache fingerprint in a pipeline `DemoGraph`, as a run of it would compute them (stage name →
    fingerprint): equal fingerprints are what let one config's run serve another's stages from the cache."""
    from capvector.pipeline.stages import StageRunner

    runner = StageRunner(graph.root)
    for stage in graph.stages:
        runner.fingerprints[stage.name] = runner.fingerprint(stage)
    return runner.fingerprints
