"""`transformers.Trainer` hook: λ·L_orth and GSE's load-balancing loss added in `compute_loss`, and logged.

transformers is not imported here: the mix-in only overrides `compute_loss` and `log`, whose contracts
(`compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)`, `log(logs, ...)`) it relies on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capvector.loss_terms import LossTerms

if TYPE_CHECKING:
    from capvector.orth import OrthogonalRegularizer


class LossTermsMixin:
    """``class MyTrainer(LossTermsMixin, Trainer)``; then ``trainer.orth_regularizer = reg`` (optional).

    Training losses gain `orth_regularizer()` and, when the model has a GSE adapter and `gse_aux` is set, its
    weighted load-balancing loss (over the global batch when distributed). Both are logged beside ``loss`` at the
    logging steps (``orth``, ``orth/<group>``, ``gse_aux``). Under gradient accumulation they count once per
    optimiser step, whether or not Trainer divides the loss by the accumulation steps.
    """

    orth_regularizer: OrthogonalRegularizer | None = None
    gse_aux: bool = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):  # noqa: ANN001, ANN201
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,  # type: ignore[misc]
                                   num_items_in_batch=num_items_in_batch, **kwargs)
        terms = LossTerms(self.orth_regularizer, gse=self.gse_aux)
        if not model.training or not terms.applies_to(model):
            return out
        loss, rest = (out[0], out[1:]) if return_outputs else (out, ())
        extra, values = terms.add(loss.new_zeros(()), model)
        loss = loss + extra / self._accumulation_divisor(num_items_in_batch)
        if self.state.global_step % max(1, self.args.logging_steps) == 0 and self.is_world_process_zero():
            logs = self.orth_regularizer.breakdown() if self.orth_regularizer is not None else {}
            self._capvector_logs = {**logs, **{k: float(v) for k, v in values.items() if k != "orth"}}
        return (loss, *rest) if return_outputs else loss

    def _accumulation_divisor(self, num_items_in_batch: Any) -> int:
        """Trainer divides the loss by the accumulation steps unless the model or `compute_loss_func` already
        normalised it over the whole accumulated batch (then the terms are divided here instead)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        return max(1, int(steps)) if scaled else 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        extra = getattr(self, "_capvector_logs", None)
        if extra and "loss" in logs:
            logs = {**logs, **extra}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]
