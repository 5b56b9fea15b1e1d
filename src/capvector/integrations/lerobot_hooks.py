"""lerobot-train hooks: λ·L_orth and GSE's load-balancing loss inside LeRobot's `update_policy`.

LeRobot is not imported (it cannot share an environment with every torch); the hooks rely on its contracts, read
from `src/lerobot/scripts/lerobot_train.py` (huggingface/lerobot@7427f318):

* a policy's `forward(batch)` returns `(loss, output_dict)` and `update_policy` calls it as `policy(batch)`
  (through `__call__`, so forward hooks run; PEFT's `PeftModel.forward` calls the policy the same way), then
  backward, clipping and the optimiser step; the scalars of `output_dict` (Python numbers only) are logged;
* `train()` calls the module-level `update_policy(train_metrics, policy, batch, optimizer, ...)` with the policy as
  `accelerator.prepare` returned it (possibly DDP around a `PeftModel` around the policy) and the optimiser.

`attach_loss_terms` adds the terms through a forward hook on the policy itself: no wrapper module, so parameter
names, `state_dict`, `save_pretrained` and the policy's class stay exactly LeRobot's. `LeRobotLossHooks.install`
puts that in `lerobot-train` from a launcher script, building the regulariser at the first step from the model
being trained (after PEFT wrapping and `accelerator.prepare`, before any optimiser step).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from capvector.errors import CapvectorError
from capvector.loss_terms import LossTerms, engine_inner


def policy_module(model: nn.Module) -> nn.Module:
    """The policy whose `forward(batch)` returns `(loss, output_dict)`: `model` without its engine wrappers (DDP,
    accelerate, `torch.compile`) and without PEFT's `PeftModel` (whose forward calls the policy)."""
    seen = model
    while True:
        inner = engine_inner(seen)
        if inner is None and callable(getattr(type(seen), "get_base_model", None)):
            inner = seen.get_base_model()
        if inner is None or inner is seen:
            return seen
        seen = inner


def attach_loss_terms(model: nn.Module, terms: LossTerms) -> RemovableHandle:
    """Make the policy in `model` return `(loss + terms, output_dict + their values)` from training forwards.

    Only forwards in training mode with grad enabled are changed (evaluation losses stay the task loss). The values
    land in `output_dict` as floats under ``orth`` and ``gse_aux``, which LeRobot's metrics tracker logs. With
    `forward(batch, reduction="none")` (sample weighting) the scalar terms are added to every sample's loss, so the
    weighted mean gains them once. Returns the hook's handle (`.remove()` undoes it).
    """
    if not terms.applies_to(model):
        raise CapvectorError("LeRobot hook: nothing to add: no orthogonal regulariser given and the policy has no "
                             "GSE adapter (train with --peft.method_type=gse after `import capvector.gse`)")
    policy = policy_module(model)

    def add_terms(module: nn.Module, args: tuple, output: Any) -> Any:
        if not (module.training and torch.is_grad_enabled()):
            return None
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], torch.Tensor)):
            raise CapvectorError(f"LeRobot hook: {type(module).__name__}.forward returned {type(output).__name__}; "
                                 "expected LeRobot's (loss tensor, output_dict)")
        loss, logs = terms.add(output[0], model)
        return loss, {**(output[1] or {}), **{k: float(v) for k, v in logs.items()}}

    return policy.register_forward_hook(add_terms)


class LeRobotLossHooks:
    """The terms for `lerobot-train`: call `install(lerobot_train)` in a launcher, then `lerobot_train.main()`.

    `vector`: the capability vector for the orthogonal regulariser (None: GSE's loss only), bound at the first
    training step with `OrthogonalRegularizer.from_vector(policy, vector, weight=..., **orth_options)` (e.g.
    ``include=PI0.orth_targets``; LoRA policies use its ``lora`` form automatically). `gse`: add the GSE adapter's
    load-balancing loss when the policy has one (`--peft.method_type=gse`; across ranks when distributed).
    """

    def __init__(self, vector: str | Path | None = None, *, weight: float = 1e-4, gse: bool = True,
                 include: Sequence[str] | None = None, **orth_options: Any) -> None:
        self.vector, self.weight, self.gse = vector, weight, gse
        self.orth_options = {"include": include, **orth_options}
        self.terms: LossTerms | None = None
        self.handle: RemovableHandle | None = None
        self.policy: nn.Module | None = None

    def attach(self, policy: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> LossTerms:
        """Bind the terms to `policy` as it is trained (and check the regularised weights are ones `optimizer`
        steps); done by `install` at the first step, or call it yourself in a loop of your own."""
        if self.handle is not None:
            raise CapvectorError("LeRobot hook: already attached to a policy; one LeRobotLossHooks per training run")
        reg = None
        if self.vector is not None:
            from capvector.orth import OrthogonalRegularizer

            reg = OrthogonalRegularizer.from_vector(policy, self.vector, weight=self.weight, **self.orth_options)
            if optimizer is not None:
                reg.expect_updates_by(optimizer)
        self.terms = LossTerms(reg, gse=self.gse)
        self.handle = attach_loss_terms(policy, self.terms)
        self.policy = policy
        return self.terms

    def install(self, train_module: ModuleType) -> None:
        """Wrap `train_module.update_policy` (LeRobot's `lerobot.scripts.lerobot_train`) so that its first call
        attaches the terms to the policy and optimiser it is given; `train()` looks the function up at each step."""
        original = getattr(train_module, "update_policy", None)
        if not callable(original):
            raise CapvectorError(f"LeRobot hook: {getattr(train_module, '__name__', train_module)!r} has no "
                                 "update_policy function (expected lerobot.scripts.lerobot_train)")
        if getattr(original, "__capvector_hooks__", None) is not None:
            raise CapvectorError("LeRobot hook: update_policy already carries capvector's hooks")

        @functools.wraps(original)
        def update_policy(train_metrics: Any, policy: nn.Module, batch: Any, optimizer: Any,
                          *args: Any, **kwargs: Any) -> Any:
            if self.handle is None:
                self.attach(policy, optimizer)
            elif policy is not self.policy:
                raise CapvectorError("LeRobot hook: update_policy got another policy than the one the terms are bound "
                                     "to; install a new LeRobotLossHooks for each training run")
            return original(train_metrics, policy, batch, optimizer, *args, **kwargs)

        update_policy.__capvector_hooks__ = self  # type: ignore[attr-defined]
        train_module.update_policy = update_policy

