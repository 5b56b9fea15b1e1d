"""Latent reasoning: training-only thought tokens that must carry a short plan (LaRA-VLA's latent chain-of-thought,
in miniature). The second objective family that applies to both architectures (sub-goal prediction needs the
tiny VLA's action queries; the pi0's VLM has none).

M learned tokens are appended to the VLM's sequence. They attend to every token, no token attends to them
(`capvector.policy.model.run_trunk`), so the policy's actions never depend on them and they are dropped at
inference: what the objective changes is the VLM's weights, which must now also compute the plan from the
observation. The targets are the sub-goal teacher's (capvector.objectives.subgoal), a reasoning trace from the
simulator's privileged state:

    q     = (1/M) Σ_m h_m^(ℓ)                h_m^(ℓ): thought token m's hidden state at VLM layer ℓ
    z     = head(q)                          the AlignmentProjector shape, trained, then discarded with the tokens
    L_lat = mean over the batch and the 21 plan numbers of smooth-L1(z − y)
    L     = L_action + α · L_lat
"""

from __future__ import annotations

import torch
from torch import nn

from capvector.objectives.subgoal import SubgoalPrediction

THOUGHT_TOKENS = 4


class LatentReasoning(SubgoalPrediction):
    """The thought tokens, the plan head and the loss; `weight` is α. Lives outside the policy (never saved in it,
    never in a capability vector), like the spatial projector."""

    reads = "thoughts"
    part_name = "latent"

    def __init__(self, width: int, target_dim: int, layer: int, weight: float = 0.5, hidden_dim: int | None = None,
                 layernorm: bool = True, tokens: int = THOUGHT_TOKENS) -> None:
        super().__init__(width, target_dim, layer, weight, hidden_dim, layernorm)
        self.thoughts = nn.Parameter(torch.randn(tokens, width) * 0.02)

    def thought_tokens(self, batch: int) -> torch.Tensor:
        """(batch, M, width): the tokens the policy's forward appends to its sequence."""
        return self.thoughts.unsqueeze(0).expand(batch, -1, -1)
