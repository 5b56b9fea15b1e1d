"""Sub-goal prediction: a latent-reasoning objective of another family than spatial alignment (LaRA-VLA-like).

Spatial alignment asks the visual tokens to encode scene geometry. This objective asks the *action queries*,
the tokens where the policy decides, to encode a short plan: where the hand will be 8, 16 and 32 steps ahead,
where the object and the goal are relative to the hand now, and where the object will have moved. Its targets
come from the simulator's privileged state (a reasoning trace the scripted expert implies), so it is used in
training only; at inference the policy is unchanged and the head is dropped.

    z     = head(mean_k h_k^(ℓ))                     h_k^(ℓ): hidden state of action query k at trunk layer ℓ
    y     = [hand(t+8)−hand(t), hand(t+16)−hand(t), hand(t+32)−hand(t),
             object(t)−hand(t), goal−hand(t), object(t+32)−object(t)] / 0.1 m,  gripper(t+8, t+16, t+32)
             (21 numbers; steps past the episode's end read its last state)
    L_sub = mean over the batch and the 21 numbers of smooth-L1(z − y)
    L     = L_action + α · L_sub
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from capvector.data.format import STATE_AHEAD_STEPS, STATE_GOAL, STATE_GRIPPER, STATE_HAND, STATE_OBJECT
from capvector.errors import CapvectorError
from capvector.objectives.alignment import AlignmentProjector
from capvector.objectives.batch import batch_tensor

SCALE_M = 0.1  # targets in units of 10 cm, so they are of order one
STATE_DIM = 39  # MetaWorld's observation
PRIVILEGED = "privileged simulator state"


class SubgoalTeacher:
    """The plan targets of a batch, from its `state` (B, 39) and `state_ahead` (B, len(STATE_AHEAD_STEPS), 39)."""

    target_dim = 4 * len(STATE_AHEAD_STEPS) + 9  # 3 hand moves + 3 positions, xyz each; one gripper per step

    def __init__(self, reads: str = "queries") -> None:
        # which tokens the objective built on these targets supervises: the action queries (sub-goal prediction)
        # or latent thought tokens (capvector.objectives.latent); spatial teachers supervise the visual tokens
        self.reads = reads

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any], grid: int) -> torch.Tensor:
        now, ahead = (batch_tensor(batch, key, dims, "sub-goal teacher", last=STATE_DIM, what=PRIVILEGED).float()
                      for key, dims in (("state", 2), ("state_ahead", 3)))
        if ahead.shape[:2] != (now.shape[0], len(STATE_AHEAD_STEPS)):
            raise CapvectorError(f"sub-goal teacher: batch['state_ahead'] has shape {tuple(ahead.shape)}, expected "
                                 f"({now.shape[0]}, {len(STATE_AHEAD_STEPS)}, {now.shape[1]})")
        hand = now[:, STATE_HAND]
        moves = [ahead[:, i, STATE_HAND] - hand for i in range(len(STATE_AHEAD_STEPS))]
        obj = now[:, STATE_OBJECT]
        where = [obj - hand, now[:, STATE_GOAL] - hand, ahead[:, -1, STATE_OBJECT] - obj]
        grip = ahead[:, :, STATE_GRIPPER]  # opening in [0, 1], already of order one
        return torch.cat([torch.cat(moves + where, dim=1) / SCALE_M, grip], dim=1)


class SubgoalPrediction(nn.Module):
    """Head + loss on the action queries' hidden state at one trunk layer; `weight` is α."""

    reads = "queries"
    part_name = "subgoal"

    def __init__(self, width: int, target_dim: int, layer: int, weight: float = 0.5, hidden_dim: int | None = None,
                 layernorm: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.weight = weight
        self.head = AlignmentProjector(width, target_dim, hidden_dim, layernorm)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of (B, K, width) token states (pooled over K) against (B, target_dim) plan targets."""
        if hidden.dim() != 3 or targets.dim() != 2 or hidden.shape[0] != targets.shape[0]:
            raise CapvectorError(f"{self.part_name} objective: {self.reads} states {tuple(hidden.shape)} and targets "
                                 f"{tuple(targets.shape)} do not pair up (expected (B, K, width) and (B, D))")
        pred = self.head(hidden.mean(dim=1))
        return F.smooth_l1_loss(pred.float(), targets.to(pred.device).float())
