"""A miniature of `lerobot/scripts/lerobot_train.py` (huggingface/lerobot@7427f318), written from its contracts.

What the hooks rely on is kept: a policy whose `forward(batch)` returns `(loss, output_dict)` of Python numbers,
optionally wrapped by PEFT (`get_peft_model`, whose forward calls the policy); `train()` prepares policy and
optimiser with accelerate and calls the module-level `update_policy(train_metrics, policy, batch, optimizer,
grad_clip_norm, accelerator=..., ...)` each step, which runs `policy(batch)` (or `policy(batch,
reduction="none")` with sample weights) under `accumulate`/`autocast`, `accelerator.backward`, clips through
`accelerator.clip_grad_norm_(policy.parameters(), ...)`, steps, zeroes, calls the unwrapped policy's `update()`,
and keeps the scalars of `output_dict` as metrics. Dataset, processors, EMA, evaluation and saving are left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MiniPolicy(nn.Module):
    """LeRobot's policy contract on a small MLP: `forward(batch, reduction="mean") -> (loss, {name: float})`."""

    name = "mini"

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = nn.Linear(6, 16)
        self.model.mid = nn.Linear(16, 16)
        self.model.action_out_proj = nn.Linear(16, 4)
        self.updates = 0

    def forward(self, batch: dict[str, torch.Tensor], reduction: str = "mean") -> tuple[torch.Tensor, dict]:
        h = torch.relu(self.model.mid(torch.relu(self.model.encoder(batch["observation.state"]))))
        per_sample = ((self.model.action_out_proj(h) - batch["action"]) ** 2).mean(-1)
        loss = per_sample.mean() if reduction == "mean" else per_sample
        return loss, {"mse": float(per_sample.detach().mean())}

    def get_optim_params(self) -> Any:
        return [p for p in self.parameters() if p.requires_grad]

    def update(self) -> None:  # LeRobot calls it after each optimiser step (EMA, target networks)
        self.updates += 1


def batches(steps: int, size: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{"observation.state": torch.randn(size, 6, generator=gen), "action": torch.randn(size, 4, generator=gen)}
            for _ in range(steps)]


def update_policy(train_metrics: dict, policy: nn.Module, batch: Any, optimizer: Any, grad_clip_norm: float,
                  accelerator: Any, lr_scheduler: Any = None, lock: Any = None,
                  sample_weights: torch.Tensor | None = None) -> tuple[dict, dict | None]:
    policy.train()
    with accelerator.accumulate(policy):
        with accelerator.autocast():
            if sample_weights is not None:
                per_sample, output_dict = policy(batch, reduction="none")
                loss = (per_sample * sample_weights).sum() / (sample_weights.sum() + 1e-6)
            else:
                loss, output_dict = policy(batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and grad_clip_norm > 0:
            accelerator.clip_grad_norm_(policy.parameters(), grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        if lr_scheduler is not None:
            lr_scheduler.step()
    inner = accelerator.unwrap_model(policy, keep_fp32_wrapper=True)
    if accelerator.sync_gradients and callable(getattr(inner, "update", None)):
        inner.update()
    train_metrics["loss"] = loss.item()
    for name, value in (output_dict or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            train_metrics.setdefault(name, []).append(float(value))
    return train_metrics, output_dict


def train(policy: nn.Module, data: list[dict], lr: float = 0.05, grad_clip_norm: float = 1.0,
          sample_weights: torch.Tensor | None = None) -> tuple[nn.Module, list[dict]]:
    """Prepare with accelerate (CPU) and run `update_policy` once per batch; returns the prepared policy and the
    output_dict of every step."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(policy.get_optim_params() if hasattr(policy, "get_optim_params")
                                else [p for p in policy.parameters() if p.requires_grad], lr=lr)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    metrics: dict = {}
    outputs = []
    for batch in data:
        extra = {} if sample_weights is None else {"sample_weights": sample_weights}
        metrics, out = update_policy(metrics, policy, batch, optimizer, grad_clip_norm, accelerator=accelerator,
                                     **extra)
        outputs.append(out)
    return policy, outputs
