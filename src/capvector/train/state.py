"""Resumable training state in safetensors: trainable weights, AdamW moments, RNG, step.

A checkpoint is a directory `checkpoints/step_XXXXXXX/` written under a temporary name and renamed
when complete, so a crash never leaves a half-written checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from capvector.errors import CapvectorError
from capvector.io.atomic import AtomicOutputDir

TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
PROJECTOR = "aux_projector.safetensors"
STATE = "trainer_state.json"


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten an optimizer's per-parameter state to named tensors; hyper-parameters go to JSON."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    groups = [dict(g) for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    current = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in current] != [len(g["params"]) for g in groups]:
        raise CapvectorError("checkpoint optimizer has a different parameter layout than this run")
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(ckpt_dir: Path, step: int, trainable: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                    projector: dict[str, torch.Tensor] | None, extra: dict) -> Path:
    """Write the checkpoint for `step` atomically (temp dir, then rename)."""
    with AtomicOutputDir(ckpt_dir / f"step_{step:07d}", overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE))
        opt_tensors, groups = optimizer_tensors(opt)
        save_file(opt_tensors, str(tmp / OPTIMIZER))
        if projector is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in projector.items()}, str(tmp / PROJECTOR))
        rng = torch.get_rng_state()
        save_file({"torch_cpu": rng}, str(tmp / "rng.safetensors"))
        state = {"step": step, "param_groups": groups, **extra}
        (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")
    return ckpt_dir / f"step_{step:07d}"


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / STATE).is_file()) if ckpt_dir.is_dir() else []
    return done[-1] if done else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / STATE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                          dict[str, torch.Tensor] | None, torch.Tensor]:
    """(state json, trainable tensors, optimizer tensors, projector tensors or None, torch RNG state)."""
    for name in (STATE, TRAINABLE, OPTIMIZER, "rng.safetensors"):
        if not (path / name).is_file():
            raise CapvectorError(f"checkpoint {path}: missing {name}")
    state = json.loads((path / STATE).read_text())
    proj = load_file(str(path / PROJECTOR)) if (path / PROJECTOR).is_file() else None
    rng = load_file(str(path / "rng.safetensors"))["torch_cpu"]
    return state, load_file(str(path / TRAINABLE)), load_file(str(path / OPTIMIZER)), proj, rng
