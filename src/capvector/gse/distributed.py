"""GSE under sharding engines: an FSDP1 auto-wrap policy, whole-weight access for the SVD initialisation, adapter
saving from a full state dict, and the load-balancing loss over the global batch.

Why each is needed (docs/integrations.md#engines): FSDP1 with flat parameters needs uniform `requires_grad` per
unit, and PEFT's policy only isolates leaf modules with a trainable `.weight` (GSE's trainable tensors live in
ParameterDicts of the GSE layer itself); ZeRO-3 and FSDP2 hold only a slice of the frozen weight the SVD reads;
FSDP2 parameters are DTensors that `save_pretrained` cannot write; and the Switch loss E·Σ_j f_j·P_j is a product
of two batch means, so the mean of per-rank losses is not the loss of the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from capvector import engines
from capvector.errors import CapvectorError

from .layer import GSELayer

WrapPolicy = Callable[[nn.Module, bool, int], bool]


def gse_fsdp_auto_wrap_policy(model: nn.Module, layer_classes: Iterable[type[nn.Module]] = ()) -> WrapPolicy:
    """An FSDP1 `auto_wrap_policy` under which every unit's own parameters are all trainable or all frozen.

    Units: each GSE layer's frozen base layer, each GSE layer (left with its trainable experts and router), and each
    module of `layer_classes` (e.g. the decoder layer class; default: the model's `_no_split_modules`, as
    transformers names them). Use with `use_orig_params=False` as well as True.
    """
    gse_layers = [m for m in model.modules() if isinstance(m, GSELayer)]
    bases = {id(m.get_base_layer()) for m in gse_layers}
    names = set(_no_split_modules(model))
    classes = tuple(layer_classes) or tuple({type(m) for m in model.modules() if type(m).__name__ in names})

    def policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            return True
        return isinstance(module, GSELayer) or id(module) in bases or (bool(classes) and isinstance(module, classes))

    return policy


def _no_split_modules(model: nn.Module) -> list[str]:
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def save_adapter(model: nn.Module, directory: str | Path) -> Path | None:
    """`save_pretrained` from a full state dict, so it works under FSDP2 (DTensor parameters) as without it.

    Every process must call it (gathering is a collective); the main process (rank 0) writes and gets the path.
    FSDP1 is refused: PEFT selects adapter tensors by module path, which FSDP1's wrappers change, and it would write
    an empty adapter. There, load `engines.full_state_dict(wrapped)` into an unwrapped copy and save that.
    """
    if any(engines.is_fsdp1_name(n) for n, _ in model.named_parameters()):
        raise CapvectorError("save_adapter: the model is wrapped by FSDP1, whose module paths PEFT cannot map to "
                             "adapter keys; load engines.full_state_dict(wrapped) into an unwrapped copy on rank 0 "
                             "and call save_pretrained on it, or use FSDP2 (fully_shard)")
    state = engines.full_state_dict(model)
    if _rank() != 0:
        return None
    model.save_pretrained(str(directory), state_dict=state)
    return Path(directory)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def aux_loss_across_ranks(model: nn.Module, adapter: str | None = None, group: object | None = None) -> torch.Tensor:
    """`aux_loss_weight` · Σ_layers Switch load-balancing loss of the last forward, over the tokens of all ranks.

    f_j (share of top-k picks) and P_j (mean router probability) are summed over ranks with one all-reduce for all
    layers. The value is the global batch's loss on every rank; the gradient flows through this rank's router
    probabilities, scaled by the world size so that the engine's gradient averaging (DDP, FSDP) yields the
    global loss's gradient. With one process it equals `model.gse_aux_loss()`.
    """
    import torch.distributed as dist

    adapter = adapter or model.active_adapters[0]
    weight = float(model.peft_config[adapter].aux_loss_weight)
    routes = [route for layer in model.modules() if isinstance(layer, GSELayer) and not layer.disable_adapters
              for route in [layer.routing(adapter)] if route is not None]
    if not routes or weight == 0.0:
        return model.gse_aux_loss(adapter)
    probs = [p for p, _ in routes]
    stats = torch.cat([torch.cat([picked.sum(0).to(p.dtype), p.detach().sum(0), p.new_tensor([p.shape[0]])])
                       for p, picked in routes])
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats, group=group)
        world = dist.get_world_size(group)
    total, linear, offset = probs[0].new_zeros(()), probs[0].new_zeros(()), 0
    for p in probs:
        e = p.shape[1]
        counts, prob_sum, tokens = stats[offset : offset + e], stats[offset + e : offset + 2 * e], stats[offset + 2 * e]
        offset += 2 * e + 1
        f = counts / tokens
        total = total + e * torch.sum(f * prob_sum / tokens)
        linear = linear + e * torch.sum(f * p.sum(0) / tokens)  # this rank's share, the part that carries gradient
    return weight * (total + world * (linear - linear.detach()))
