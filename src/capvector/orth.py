"""Orthogonal regulariser: keep downstream updates Δ = W − W_meta orthogonal to the capability vector C.

Three forms (math and reasoning in docs/orthogonal.md):

* ``exact``:    L = λ · Σ_params Σ_ij |(C Δᵀ)_ij|          (keeps C and W_meta in fp32; O(m²n) per matrix)
* ``factored``: L = λ · Σ_params Σ_ij |(U_k S_k (Δ V_k)ᵀ)_ij|  with C ≈ U_k S_k V_kᵀ, Δ V_k = W V_k − (W_meta V_k)
                (keeps U_k S_k, V_k, W_meta V_k; O(k·m·n + k·m²) per matrix; equals ``exact`` when k ≥ rank C)
* ``lora``:     L = λ · Σ_modules Σ_ij |(A_cap A_newᵀ)_ij|   with A_cap = top-k right singular vectors of C

Usage: ``reg = OrthogonalRegularizer.from_vector(model, vec_dir); loss = loss + reg()``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from capvector.errors import CapvectorError
from capvector.selection import make_selection
from capvector.vectors.format import CapabilityVector

log = logging.getLogger(__name__)

MODES = ("exact", "factored", "lora", "auto")
_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
_LORA_A = re.compile(r"^(?P<mod>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def canonical_name(name: str) -> str:
    """Model parameter name → base-model name: drop DDP/compile/PEFT prefixes and PEFT's `.base_layer`."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name.replace(".base_layer.", ".")


def group_of(name: str) -> str:
    """Logging group: the name with layer indices wildcarded (`model.layers.*.self_attn.q_proj.weight`)."""
    return re.sub(r"\.\d+\.", ".*.", name)


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a parameter as (out, in): vectors as one row, conv kernels flattened on the input side."""
    return t.reshape(1, -1) if t.dim() == 1 else t.reshape(t.shape[0], -1)


def _match(vector_names: Sequence[str], name: str) -> str | None:
    """Vector key for a canonical model name: exact, else the unique key that one is a dotted suffix of the other."""
    names = set(vector_names)
    if name in names:
        return name
    hits = [v for v in vector_names if v.endswith("." + name) or name.endswith("." + v)]
    return hits[0] if len(hits) == 1 else None


def _svd_factors(vec: CapabilityVector, key: str, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (U, S, Vᵀ) of C in fp32, from the factors when C is stored factored (no dense m×n copy)."""
    if vec.is_factored(key):
        b, a = vec.factors(key)
        a = _as_matrix(a)
        qb, rb = torch.linalg.qr(b.double())  # C = Qb (Rb A); SVD of the small r×n core
        u, s, vh = torch.linalg.svd(rb @ a.double(), full_matrices=False)
        u = qb @ u
    else:
        u, s, vh = torch.linalg.svd(_as_matrix(vec.dense(key)), full_matrices=False)
    k = min(k, s.numel())
    return u[:, :k].float(), s[:k].float(), vh[:k].float()


@dataclass
class _Term:
    """One regularised parameter and the fp32 constants its loss needs."""

    name: str  # model parameter name
    key: str  # vector key
    group: str
    param: nn.Parameter
    consts: dict[str, torch.Tensor]

    def to(self, device: torch.device) -> None:
        for k, v in self.consts.items():
            if v.device != device:
                self.consts[k] = v.to(device)


class OrthogonalRegularizer(nn.Module):
    """λ_orth · Σ |overlap(C, update)|, summed over selected parameters; call it with no argument."""

    def __init__(self, terms: list[_Term], mode: str, weight: float, skipped: list[str]) -> None:
        super().__init__()
        self.terms, self.mode, self.weight, self.skipped = terms, mode, float(weight), skipped
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vector(
        cls,
        model: nn.Module,
        vector: str | Path | CapabilityVector,
        *,
        weight: float = 1e-4,
        mode: str = "auto",
        rank: int = 16,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        preset: str | None = None,
        adapter: str | None = None,
    ) -> OrthogonalRegularizer:
        """Bind a vector to `model`'s trainable parameters; snapshot W_meta (or its projections) now.

        Call before the first optimiser step: the current weights are taken as W_meta.
        `rank`: k for ``factored`` (C ≈ U_k S_k V_kᵀ) and ``lora`` (rows of A_cap).
        `mode="auto"`: ``lora`` when the model has trainable PEFT ``lora_A`` weights, else ``factored``.
        """
        if mode not in MODES:
            raise CapvectorError(f"orthogonal regulariser: mode {mode!r} unknown; expected one of {MODES}")
        if rank < 1:
            raise CapvectorError(f"orthogonal regulariser: rank must be ≥ 1, found {rank}")
        _reject_sharded(model)
        if mode == "auto":
            lora = any(p.requires_grad and _LORA_A.match(canonical_name(n)) for n, p in model.named_parameters())
            mode = "lora" if lora else "factored"
        vec = vector if isinstance(vector, CapabilityVector) else CapabilityVector(vector)
        all_names = vec.names()
        selected = make_selection(include, exclude, preset).filter(all_names)
        terms: list[_Term] = []
        skipped: list[str] = []
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if not param.requires_grad:
                    continue
                if mode == "lora":
                    m = _LORA_A.match(canonical_name(pname))
                    if m is None or (adapter is not None and m["adapter"] != adapter):
                        continue
                    base = m["mod"] + ".weight"
                else:
                    base = canonical_name(pname)
                key = _match(selected, base)
                if key is None:
                    if _match(all_names, base) is None:  # deselected by include/exclude: not worth a warning
                        skipped.append(pname)
                    continue
                terms.append(_build_term(vec, key, pname, param, mode, rank))
        if not terms:
            raise CapvectorError(
                f"{vec.path}: no trainable parameter of the model matches a vector key in mode {mode!r} "
                f"(vector has {len(vec.names())} keys, e.g. {vec.names()[:3]}; model has e.g. "
                f"{[n for n, p in model.named_parameters() if p.requires_grad][:3]})"
            )
        if skipped:
            log.warning("orthogonal regulariser: %d trainable parameters have no vector and are skipped, e.g. %s",
                        len(skipped), skipped[:5])
        return cls(terms, mode, weight, skipped)

    # ------------------------------------------------------------------ evaluation
    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        """The weighted loss (a scalar on the parameters' device); per-group values land in `self.last`."""
        total: torch.Tensor | None = None
        groups: dict[str, float] = {}
        for t in self.terms:
            t.to(t.param.device)
            value = _TERM_LOSS[self.mode](t)
            groups[t.group] = groups.get(t.group, 0.0) + float(value.detach())
            total = value if total is None else total + value
        assert total is not None
        out = self.weight * total
        self.last = {"orth": float(out.detach()), **{f"orth/{g}": self.weight * v for g, v in groups.items()}}
        return out

    def breakdown(self) -> dict[str, float]:
        """Weighted total and per-group values of the last call, for logging."""
        return dict(self.last)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, weight={self.weight}, params={len(self.terms)}, skipped={len(self.skipped)}"


def _reject_sharded(model: nn.Module) -> None:
    """Sharded parameters (FSDP flat params, DTensors) hold only a slice of W: refuse them clearly."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support: nothing can be sharded
        return
    for name, p in model.named_parameters():
        if getattr(p, "_is_flat_param", False) or isinstance(p, DTensor) or "_fsdp_wrapped_module" in name:
            raise CapvectorError(
                f"orthogonal regulariser: parameter {name!r} is sharded (FSDP); sharded parameters are not "
                "supported. Use DDP, or FSDP with use_orig_params=True and a full state (no sharding)"
            )


def _build_term(vec: CapabilityVector, key: str, pname: str, param: nn.Parameter, mode: str, rank: int) -> _Term:
    shape = tuple(param.shape)
    if mode == "lora":
        n_in = _as_matrix(param).shape[1]
        vshape = vec.shape(key)
        if len(vshape) < 2 or int(torch.tensor(vshape[1:]).prod()) != n_in:
            raise CapvectorError(
                f"{vec.path}: key {key!r} has shape {vshape}; LoRA A {pname!r} {shape} expects input width {n_in}"
            )
        _, _, vh = _svd_factors(vec, key, rank)
        return _Term(pname, key, group_of(canonical_name(pname)), param, {"a_cap": vh.to(_work_dtype(param))})
    if vec.shape(key) != shape:
        raise CapvectorError(f"{vec.path}: key {key!r} has shape {vec.shape(key)}, parameter {pname!r} has {shape}")
    w_meta = _as_matrix(param.detach()).to(_work_dtype(param))
    if mode == "exact":
        consts = {"c": _as_matrix(vec.dense(key)).float(), "w_meta": w_meta.clone()}
    else:
        u, s, vh = _svd_factors(vec, key, rank)
        v = vh.T.contiguous()
        consts = {"us": u * s, "v": v, "p": w_meta @ v.to(w_meta.dtype)}
    consts = {k: c.to(_work_dtype(param)) for k, c in consts.items()}
    return _Term(pname, key, group_of(canonical_name(pname)), param, consts)


class _AbsSumOuter(torch.autograd.Function):
    """Σ_ij |(L Rᵀ)_ij| in row blocks of L; backward recomputes each block, so no m×m product is kept."""

    @staticmethod
    def forward(ctx, left: torch.Tensor, right: torch.Tensor, block: int) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(left, right)
        ctx.block = block
        total = right.new_zeros(())
        for s in range(0, left.shape[0], block):
            total = total + (left[s : s + block] @ right.T).abs().sum()
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        left, right = ctx.saved_tensors
        g_left = torch.zeros_like(left) if ctx.needs_input_grad[0] else None
        g_right = torch.zeros_like(right) if ctx.needs_input_grad[1] else None
        for s in range(0, left.shape[0], ctx.block):
            sign = (left[s : s + ctx.block] @ right.T).sign()
            if g_right is not None:
                g_right += sign.T @ left[s : s + ctx.block]
            if g_left is not None:
                g_left[s : s + ctx.block] = sign @ right
        return (None if g_left is None else grad * g_left, None if g_right is None else grad * g_right, None)


def abs_sum_outer(left: torch.Tensor, right: torch.Tensor, block_elems: int = 1 << 22) -> torch.Tensor:
    """Σ_ij |(left · rightᵀ)_ij| with at most ~`block_elems` elements of the product alive at once."""
    return _AbsSumOuter.apply(left, right, max(1, block_elems // max(1, right.shape[0])))


def _work_dtype(param: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 parameters, fp64 for fp64 ones (so gradcheck sees the true function)."""
    return torch.promote_types(param.dtype, torch.float32)


def _w(t: _Term) -> torch.Tensor:
    return _as_matrix(t.param).to(_work_dtype(t.param))


def _exact(t: _Term) -> torch.Tensor:
    delta = _w(t) - t.consts["w_meta"]
    return abs_sum_outer(t.consts["c"], delta)


def _factored(t: _Term) -> torch.Tensor:
    dv = _w(t) @ t.consts["v"] - t.consts["p"]  # Δ V_k, m×k
    return abs_sum_outer(t.consts["us"], dv)


def _lora(t: _Term) -> torch.Tensor:
    return (t.consts["a_cap"] @ _w(t).T).abs().sum()


_TERM_LOSS = {"exact": _exact, "factored": _factored, "lora": _lora}


class OrthogonalLossMixin:
    """`transformers.Trainer` mix-in: adds `self.orth_regularizer()` to the training loss and logs it.

    ``class MyTrainer(OrthogonalLossMixin, Trainer): ...``; then ``trainer.orth_regularizer = reg``.
    """

    orth_regularizer: OrthogonalRegularizer | None = None

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):  # noqa: ANN001, ANN201
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        reg = self.orth_regularizer
        if reg is None or not model.training:
            return out
        loss, rest = (out[0], out[1:]) if return_outputs else (out, None)
        loss = loss + reg().to(loss.device)
        if self.state.global_step % max(1, self.args.logging_steps) == 0 and self.is_world_process_zero():
            self._orth_logs = reg.breakdown()
        return (loss, *rest) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        extra = getattr(self, "_orth_logs", None)
        if extra and "loss" in logs:
            logs = {**logs, **extra}
        super().log(logs, *args, **kwargs)
