"""What the distributed engines do to parameters, in one place: DDP leaves them whole, FSDP2 (`fully_shard`) turns
them into DTensors sharded by rows, FSDP1 flattens them (with `use_orig_params=True` the original names survive as
flat 1-D slices, whole only while FSDP has gathered a module for its forward).

Library code that reads weights outside the forward pass (the orthogonal regulariser, GSE's SVD initialisation,
exports) asks this module what it holds instead of assuming a whole tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from capvector.errors import CapvectorError

FSDP1_SEGMENT = "_fsdp_wrapped_module."
FSDP1_FLAT = "_flat_param"
FSDP1_FIX = "FSDP1 with flat parameters: set use_orig_params=True (accelerate config: fsdp_use_orig_params: true)"


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: nothing can be a DTensor
        return None
    return DTensor


def is_dtensor(t: object) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def uses_fsdp2(model: nn.Module) -> bool:
    """True when `fully_shard` was applied to `model` or one of its submodules."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def is_fsdp1_name(name: str) -> bool:
    """A parameter name under an FSDP1 wrapper (its tensor is a flat shard outside the wrapper's forward)."""
    return FSDP1_SEGMENT in name or name.endswith(FSDP1_FLAT)


def refuse_unsupported(model: nn.Module, who: str) -> None:
    """FSDP1 with `use_orig_params=False` hides the original parameters behind one flat tensor per unit; DeepSpeed
    ZeRO-3 partitions them into flat pieces (`ds_status` marks its parameters) and is untested here."""
    for name, p in model.named_parameters():
        if name.endswith(FSDP1_FLAT):
            raise CapvectorError(f"{who}: parameter {name!r} is an FSDP1 flat parameter, which mixes the rows of "
                                 f"many weights; supported: DDP, FSDP2 (fully_shard), or {FSDP1_FIX}")
        if hasattr(p, "ds_status"):
            raise CapvectorError(f"{who}: parameter {name!r} is partitioned by DeepSpeed ZeRO-3, which is not "
                                 "supported; use ZeRO-1/2 (whole weights, as DDP) or FSDP2 (fully_shard)")


@dataclass(frozen=True)
class RowShard:
    """The rows [offset, offset + local.shape[0]) of a weight held by this rank, and the group summing over shards."""

    local: torch.Tensor
    offset: int
    group: object | None  # a torch.distributed ProcessGroup, None when nothing is sharded


def row_shard(param: torch.Tensor, who: str) -> RowShard:
    """This rank's rows of a DTensor sharded on dim 0 (FSDP2), differentiable through `to_local()`.

    Replicated mesh dimensions (HSDP's replica dimension) hold whole copies: only the one sharding dimension is
    summed over. Any other placement (column sharding, `Partial`) is refused: rows would not be whole.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shard_dims = [i for i, pl in enumerate(param.placements) if isinstance(pl, Shard)]
    bad = [pl for pl in param.placements if not (isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0))]
    if bad or len(shard_dims) > 1:
        raise CapvectorError(f"{who}: DTensor placements {tuple(param.placements)} are not supported; expected rows "
                             "sharded on one mesh dimension (Shard(0), what fully_shard does) and Replicate elsewhere")
    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    group = param.device_mesh.get_group(shard_dims[0]) if shard_dims else None
    return RowShard(param.to_local(), int(offset[0]) if offset else 0, group)


def gather_rows(local_rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor whose rows are sharded like the DTensor `like` (this rank holds `local_rows`)."""
    from torch.distributed.tensor import DTensor

    shape = (int(like.shape[0]), *local_rows.shape[1:])
    stride = tuple(torch.empty(shape, device="meta").stride())
    return DTensor.from_local(local_rows, like.device_mesh, like.placements, shape=torch.Size(shape),
                              stride=stride).full_tensor()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole weights on CPU under their plain names (no FSDP1 wrapper segments), whatever the engine (plain, DDP,
    FSDP1, FSDP2). A collective under FSDP: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not (uses_fsdp2(model) or any(is_fsdp1_name(n) for n, _ in model.named_parameters())):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Offloading tensors that already live on the CPU hands back views of storage FSDP1 frees on resharding.
    on_accelerator = any(p.device.type != "cpu" for p in model.parameters())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=on_accelerator))
    return {k.replace(FSDP1_SEGMENT, ""): v.detach().to("cpu", copy=True) for k, v in state.items()}


_ENGINE_ENV = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED"}


def check_requested_engine(distributed_type: str) -> None:
    """Refuse a run whose accelerate config asks for FSDP or DeepSpeed while accelerate set up something else (on CPU
    it quietly falls back to DDP, so the memory plan the user made would not hold)."""
    import os

    for engine, env in _ENGINE_ENV.items():
        if os.environ.get(env, "false").lower() in ("1", "true", "yes") and engine not in distributed_type.upper():
            raise CapvectorError(f"the accelerate config asks for {engine} ({env}=true) but accelerate set up "
                                 f"{distributed_type}: {engine} needs GPUs (accelerate runs it on no CPU-only "
                                 "machine); launch without that config (DDP) or on GPUs")


@contextmanager
def gathered_weight(weight: torch.Tensor) -> Iterator[torch.Tensor]:
    """The whole of `weight` for reading (GSE's SVD initialisation), whatever holds it: an FSDP2 DTensor is
    gathered, a DeepSpeed ZeRO-3 partition is gathered for the block (PEFT's `gather_params_ctx`, as its
    PiSSA/OLoRA initialisations do), a plain tensor is yielded as it is. Read-only: changes are not written back."""
    if is_dtensor(weight):
        yield weight.detach().full_tensor()
        return
    from peft.utils.integrations import gather_params_ctx

    with gather_params_ctx(weight, modifier_rank=None):
        yield weight
