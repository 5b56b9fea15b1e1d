"""Spatial representation alignment (Spatial-Forcing style) as a loss on the policy's visual tokens.

    z_i  = projector(h_i^(ℓ))                 h_i^(ℓ): hidden state of visual token i at trunk layer ℓ
    L_align = 1 − (1 / (B·T)) Σ_b Σ_i cos(z_{b,i}, y_{b,i})      y: frozen teacher target per token
    L = L_action + α · L_align

The projector is trained with the policy but lives outside it, so it is never part of a saved policy
(and never enters a capability vector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from capvector.errors import CapvectorError


class AlignmentProjector(nn.Module):
    """Optional LayerNorm → Linear → GELU → Linear; Xavier-uniform weights and zero biases."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, layernorm: bool = True) -> None:
        super().__init__()
        hidden_dim = hidden_dim or max(in_dim, out_dim)
        self.norm = nn.LayerNorm(in_dim) if layernorm else nn.Identity()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def cosine_alignment_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 − mean cosine similarity over tokens (and batch).

    `mask` (B, T) drops tokens without a valid target; by default those whose target is all zeros (a zero
    vector has no direction to align with, e.g. static background under a residual teacher).
    """
    if pred.shape != target.shape:
        raise CapvectorError(f"alignment loss: projected features {tuple(pred.shape)} vs targets {tuple(target.shape)}")
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)
    if mask is None:
        mask = target.detach().abs().amax(dim=-1) > 0
    if tuple(mask.shape) != tuple(cos.shape):
        raise CapvectorError(f"alignment loss: mask shape {tuple(mask.shape)}, expected {tuple(cos.shape)}")
    w = mask.to(cos.dtype)
    return 1.0 - (cos * w).sum() / w.sum().clamp_min(1.0)


class SpatialAlignment(nn.Module):
    """Projector + loss for one trunk layer; `weight` is α in L = L_action + α·L_align."""

    reads = "visual"  # the tokens it supervises (capvector.objectives.subgoal reads the action queries)
    part_name = "align"

    def __init__(
        self,
        width: int,
        target_dim: int,
        layer: int,
        weight: float = 0.5,
        hidden_dim: int | None = None,
        layernorm: bool = True,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.weight = weight
        self.projector = AlignmentProjector(width, target_dim, hidden_dim, layernorm)

    def forward(self, visual_hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unweighted alignment loss of (B, T, width) hidden states against (B, T, target_dim) targets."""
        if visual_hidden.shape[:2] != targets.shape[:2]:
            raise CapvectorError(
                f"spatial alignment: {visual_hidden.shape[1]} visual tokens per sample but the teacher gave "
                f"{targets.shape[1]} targets (shape {tuple(targets.shape)})"
            )
        return cosine_alignment_loss(self.projector(visual_hidden), targets.to(visual_hidden.device))
