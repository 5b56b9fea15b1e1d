"""The trained-directory format: what a finished run (or a snapshot) leaves for evaluation and `capvector
extract/merge`, and `load_trained`, the one reader of it (the simulator, the pipeline, LIBERO and the benchmarks
all open trained policies through it).

Layouts, by tuner: full: `policy/` (a policy directory). lora: `adapter/` and `policy/` with the adapter merged
in. gse / peft: `adapter/` and `base_policy/` (the frozen base plus any `also_train` updates), since routed
experts have no dense equivalent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from capvector.errors import CapvectorError
from capvector.policy import build_policy, load_policy, save_policy

POLICY_DIR = "policy"
SNAPSHOT_DIR = "snapshots"
ADAPTER_DIR = "adapter"
BASE_DIR = "base_policy"


def snapshot_dir(run_dir: str | Path, step: int) -> Path:
    """Where `TrainConfig.snapshot_steps` put the policy exported at `step` (open it with `load_trained`)."""
    return Path(run_dir) / SNAPSHOT_DIR / f"step_{step:07d}"


def write_trained(whole: nn.Module, root: Path, tuner: str, base_state: Mapping[str, torch.Tensor] | None) -> Path:
    """Write the unsharded trained model `whole` (a tiny policy, or a PEFT model around one) into `root` in the layout
    of `tuner`; returns what `load_trained` opens. `base_state`: the policy's weights before tuning (gse / peft)."""
    if tuner == "full":
        return save_policy(whole, root / POLICY_DIR)
    whole.save_pretrained(str(root / ADAPTER_DIR))
    if tuner == "lora":
        return save_policy(whole.merge_and_unload(), root / POLICY_DIR)
    if base_state is None:
        raise CapvectorError(f"exporting a {tuner!r} run needs the base policy's weights from before tuning")
    base = build_policy(whole.base_model.model.config)
    state = dict(base_state)
    for name, p in whole.base_model.model.named_parameters():
        plain = name.replace(".base_layer.", ".")
        if p.requires_grad and plain in state:
            state[plain] = p.detach().clone()
    base.load_state_dict(state)
    save_policy(base, root / BASE_DIR)
    return root


def load_trained(path: str | Path) -> nn.Module:
    """A trained policy ready for `act()`.

    `path`: a policy dir, or a run/snapshot dir holding `policy/` or `base_policy/` + `adapter/`.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return load_policy(path)
    if (path / POLICY_DIR / "model.safetensors").is_file():
        return load_policy(path / POLICY_DIR)
    if (path / BASE_DIR).is_dir() and (path / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        with contextlib.suppress(ImportError):
            import capvector.gse  # noqa: F401  (registers the GSE tuner with PEFT)
        return PeftModel.from_pretrained(load_policy(path / BASE_DIR), str(path / ADAPTER_DIR)).eval()
    raise CapvectorError(f"{path}: no trained policy (expected model.safetensors, policy/, or "
                         f"{BASE_DIR}/ + {ADAPTER_DIR}/)")
