"""The extra loss terms capvector adds to a training loop it does not own: λ·L_orth and GSE's load balancing.

One object, `LossTerms`, so the LeRobot hook, the OpenVLA-OFT patch and the `transformers.Trainer` mix-in add
exactly the same thing (docs/integrations.md#training-hooks); capvector's own trainer takes GSE's loss from the
same `tuner_aux_loss`. It works on whatever the loop holds (a PEFT model, or one inside DDP, accelerate or
`torch.compile` wrappers) and imports neither the regulariser nor GSE unless they are used.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from capvector.orth import OrthogonalRegularizer

_WRAPPED = ("module", "_orig_mod")  # DDP / DataParallel / accelerate wrappers; torch.compile


def engine_inner(model: nn.Module) -> nn.Module | None:
    """The module an engine wrapper (DDP, DataParallel, accelerate's, `torch.compile`'s) holds; None if `model` is
    no such wrapper."""
    return next((getattr(model, a) for a in _WRAPPED if isinstance(getattr(model, a, None), nn.Module)), None)


def aux_loss_owner(model: nn.Module) -> nn.Module | None:
    """The module whose `gse_aux_loss()` applies to `model`: itself, or the first one inside its engine wrappers
    (DDP does not forward attributes); None when no tuner with an auxiliary loss is there."""
    seen: nn.Module | None = model
    while seen is not None and not callable(getattr(seen, "gse_aux_loss", None)):
        seen = engine_inner(seen)
    return seen


def tuner_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The tuner's own auxiliary loss, already weighted by the tuner's config (GSE load balancing), or None.

    Duck-typed: a PEFT model whose tuner defines `gse_aux_loss()` (found through engine wrappers); with several
    processes, over the global batch (the Switch loss is not a mean over tokens, so a mean over ranks of per-rank
    losses would not be it).
    """
    owner = aux_loss_owner(model)
    if owner is None:
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        from capvector.gse.distributed import aux_loss_across_ranks

        return aux_loss_across_ranks(owner)
    return owner.gse_aux_loss()


@dataclass
class LossTerms:
    """λ·L_orth (an `OrthogonalRegularizer` bound to the trained model) and, when the model has a GSE adapter and
    `gse` is set, its weighted load-balancing loss. Call after each training forward, before backward."""

    orth: OrthogonalRegularizer | None = None
    gse: bool = True

    def compute(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The terms of this step, scalars with grad: ``orth`` and ``gse_aux``, each only where it applies."""
        terms: dict[str, torch.Tensor] = {}
        if self.orth is not None:
            terms["orth"] = self.orth()
        aux = tuner_aux_loss(model) if self.gse else None
        if aux is not None:
            terms["gse_aux"] = aux
        return terms

    def add(self, loss: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`loss` plus every term (broadcast onto a per-sample loss), and the terms detached, for logging.

        The terms are computed in fp32 even where the caller runs under autocast (LeRobot's forward, Trainer's
        `compute_loss`): a bf16 matmul would round the regulariser's overlaps.
        """
        device = loss.device.type
        with torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext():
            terms = self.compute(model)
        for value in terms.values():
            loss = loss + value.to(loss.device)
        return loss, {k: v.detach() for k, v in terms.items()}

    def applies_to(self, model: nn.Module) -> bool:
        """Whether anything would be added for `model` (a hook that adds nothing is a mistake worth an error)."""
        return self.orth is not None or (self.gse and aux_loss_owner(model) is not None)
