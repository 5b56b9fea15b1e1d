"""Independent computations of the terms the training hooks add, for comparing the hooks against.

Nothing here calls the code under test: the GSE loss is the Switch formula written out from each layer's routing
(router probabilities and top-k picks), the orthogonal regulariser the defining sums from the capability vector
C = θ_aux − θ_sft that the test itself built.
"""

from __future__ import annotations

import torch
from torch import nn

from capvector.gse import GSELayer


def direct_gse_aux(model: nn.Module, weight: float, adapter: str = "default") -> torch.Tensor:
    """weight · Σ_layers E · Σ_j f_j · P_j of the last forward (f_j: share of tokens picking expert j, P_j: mean
    router probability of j)."""
    total = torch.zeros(())
    for layer in model.modules():
        if isinstance(layer, GSELayer) and layer.routing(adapter) is not None:
            probs, picked = layer.routing(adapter)
            experts = probs.shape[1]
            total = total + experts * (picked.float().mean(0) * probs.mean(0)).sum()
    return weight * total


def direct_orth_exact(weights: dict[str, torch.Tensor], w_meta: dict[str, torch.Tensor],
                      capvec: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
    """λ · Σ_params Σ_ij |(C (W − W_meta)ᵀ)_ij|."""
    return lam * sum(((capvec[k] @ (w - w_meta[k]).T).abs().sum() for k, w in weights.items()), torch.zeros(()))


def direct_orth_lora(lora_a: dict[str, torch.Tensor], capvec: dict[str, torch.Tensor], lam: float,
                     rank: int) -> torch.Tensor:
    """λ · Σ_modules Σ_ij |(V_k A_newᵀ)_ij| with V_k the top-`rank` right singular vectors of C (sign-free: |·|)."""
    total = torch.zeros(())
    for key, a in lora_a.items():
        vh = torch.linalg.svd(capvec[key].double(), full_matrices=False)[2][:rank].float()
        total = total + (vh @ a.T).abs().sum()
    return lam * total
