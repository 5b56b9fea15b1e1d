"""Orthogonal regulariser: keep downstream updates Δ = W − W_meta orthogonal to the capability vector C.

Three forms (math and reasoning in docs/orthogonal.md):

* ``exact``:    L = λ · Σ_params Σ_ij |(C Δᵀ)_ij|          (keeps C and W_meta in fp32; O(m²n) per matrix)
* ``factored``: L = λ · Σ_params Σ_ij |(U_k S_k (Δ V_k)ᵀ)_ij|  with C ≈ U_k S_k V_kᵀ, Δ V_k = W V_k − (W_meta V_k)
                (keeps U_k S_k, V_k, W_meta V_k; O(k·m·n + k·m²) per matrix; equals ``exact`` when k ≥ rank C)
* ``lora``:     L = λ · Σ_modules Σ_ij |(A_cap A_newᵀ)_ij|   with A_cap = top-k right singular vectors of C

Usage: ``reg = OrthogonalRegularizer.from_vector(model, vec_dir); loss = loss + reg()``.

Engines: every call resolves the live parameters by name from the model it was built from, so wrapping or sharding
the model later cannot leave it holding stale tensors. Plain and DDP parameters are used as they are; FSDP2
(DTensor, rows sharded) ones per local row shard with replicated factors and one all-reduce of the scalar; FSDP1
(``use_orig_params=True``) ones while FSDP has gathered them, from a forward pre-hook (see `capvector.engines`
and docs/orthogonal.md#engines).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from capvector import engines
from capvector.errors import CapvectorError
from capvector.selection import make_selection
from capvector.vectors.format import CapabilityVector

log = logging.getLogger(__name__)

MODES = ("exact", "factored", "lora", "auto")
_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
_LORA_A = re.compile(r"^(?P<mod>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def canonical_name(name: str) -> str:
    """Model parameter name → base-model name: drop DDP/compile/PEFT prefixes, FSDP1/checkpoint wrapper segments
    and PEFT's `.base_layer`."""
    for seg in _WRAPPER_SEGMENTS:
        name = name.replace(seg, "")
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


def _svd_factors(vec: CapabilityVector, key: str, k: int,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (U, S, Vᵀ) of C in fp32 on `device` (the parameter's: a GPU's SVD is the fast one there), from the
    factors when C is stored factored (no dense m×n copy)."""
    if vec.is_factored(key):
        b, a = vec.factors(key)
        a = _as_matrix(a).to(device)
        qb, rb = torch.linalg.qr(b.to(device).double())  # C = Qb (Rb A); SVD of the small r×n core
        u, s, vh = torch.linalg.svd(rb @ a.double(), full_matrices=False)
        u = qb @ u
    else:
        u, s, vh = torch.linalg.svd(_as_matrix(vec.dense(key)).to(device), full_matrices=False)
    k = min(k, s.numel())
    return u[:, :k].float(), s[:k].float(), vh[:k].float()


@dataclass
class _Term:
    """One regularised parameter, found by name in the model at every call, and the fp32 constants its loss needs.

    Constants cover the whole weight (under FSDP2 they are gathered once, at construction: W_meta·V_k is rows × k);
    a rank holding a block of rows slices the row-indexed ones. `captured`: FSDP1 terms, computed in a forward
    pre-hook while FSDP has gathered the weight; their constants are filled at the first capture.
    """

    name: str  # parameter name in the model the regulariser was built from
    key: str  # vector key
    group: str
    consts: dict[str, torch.Tensor]
    rows: int  # rows of the whole weight as a matrix
    captured: bool = False

    def to(self, device: torch.device) -> None:
        for k, v in self.consts.items():
            if v.device != device:
                self.consts[k] = v.to(device)

    def at_rows(self, offset: int, count: int, mode: str) -> dict[str, torch.Tensor]:
        """Constants for weight rows [offset, offset + count): the row-indexed ones sliced, the factors whole."""
        if (offset, count) == (0, self.rows):
            return self.consts
        return {k: (v[offset : offset + count] if k in _ROW_CONSTS[mode] else v) for k, v in self.consts.items()}


_ROW_CONSTS = {"exact": ("w_meta",), "factored": ("p",), "lora": ()}


class OrthogonalRegularizer(nn.Module):
    """λ_orth · Σ |overlap(C, update)|, summed over selected parameters; call it with no argument.

    Every call reads the parameters the model holds now (by name), so it never regularises stale tensors; under
    FSDP2 every rank must call it (one all-reduce), under FSDP1 call it after the model's forward.
    """

    def __init__(self, model: nn.Module, terms: list[_Term], mode: str, weight: float, skipped: list[str],
                 vector: CapabilityVector, rank: int) -> None:
        super().__init__()
        self.terms, self.mode, self.weight, self.skipped = terms, mode, float(weight), skipped
        self._vector, self._rank = vector, rank  # FSDP1 terms compute their constants at the first forward
        self.__dict__["_model"] = model  # not a submodule: the regulariser owns no weights of the model
        self.last: dict[str, torch.Tensor] = {}  # detached; read as floats through breakdown()
        self._captures: dict[str, torch.Tensor] = {}
        self._optimizer_ids: set[int] | None = None
        self._hooks = [self._hook_capture(t) for t in terms if t.captured]

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

        Call before the first optimiser step: the current weights are taken as W_meta (under FSDP1, the weights of
        the first forward pass). Build it from the model that is trained: under FSDP1, after wrapping.
        `rank`: k for ``factored`` (C ≈ U_k S_k V_kᵀ) and ``lora`` (rows of A_cap).
        `mode="auto"`: ``lora`` when the model has trainable PEFT ``lora_A`` weights, else ``factored``.
        """
        if mode not in MODES:
            raise CapvectorError(f"orthogonal regulariser: mode {mode!r} unknown; expected one of {MODES}")
        if rank < 1:
            raise CapvectorError(f"orthogonal regulariser: rank must be ≥ 1, found {rank}")
        engines.refuse_unsupported(model, "orthogonal regulariser")
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
        return cls(model, terms, mode, weight, skipped, vec, rank)

    def expect_updates_by(self, optimizer: torch.optim.Optimizer) -> None:
        """Fail at every later call if a regularised parameter is not one `optimizer` updates (e.g. an optimiser
        built before the model was sharded, which would step tensors the model no longer uses)."""
        self._optimizer_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self._check_optimizer(self._model)

    # ------------------------------------------------------------------ evaluation
    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        """The weighted loss (a scalar on the parameters' device); per-group values land in `self.last`.

        `model`: where to read the parameters (default: the model it was built from), matched by canonical name.
        """
        model = self._model if model is None else model
        live = {canonical_name(n): p for n, p in model.named_parameters()}
        fsdp2 = self._optimizer_ids is not None and engines.uses_fsdp2(model)
        whole: list[tuple[str, torch.Tensor]] = []  # terms whose value is complete on this rank
        shards: dict[object, list[tuple[str, torch.Tensor]]] = {}  # process group → this rank's row-shard terms
        for t in self.terms:
            if t.captured:
                whole.append((t.group, self._take_capture(t)))
                continue
            p = self._live_param(t, live, fsdp2)
            if engines.is_dtensor(p) and p.dim() >= 2:
                shard = engines.row_shard(p, f"orthogonal regulariser: parameter {t.name!r}")
                w = _as_matrix(shard.local)
                t.to(w.device)
                value = _TERM_LOSS[self.mode](t.at_rows(shard.offset, w.shape[0], self.mode), w.to(_work_dtype(w)))
                shards.setdefault(shard.group, []).append((t.group, value))
                continue
            if engines.is_dtensor(p):  # a 1-D weight (norm, bias): its rows are columns, so use it whole
                p = p.full_tensor()
            if _row_count(p) != t.rows:
                raise CapvectorError(f"orthogonal regulariser: parameter {t.name!r} has shape {tuple(p.shape)} now, "
                                     f"not the whole weight ({t.rows} rows) it was bound to; build the regulariser "
                                     "from the model that is trained (after wrapping, e.g. after accelerator.prepare)")
            t.to(p.device)
            whole.append((t.group, _TERM_LOSS[self.mode](t.consts, _as_matrix(p).to(_work_dtype(p)))))
        out, groups = _combine(whole, shards)
        out = self.weight * out
        # Detached tensors, not floats: a float() per call would wait for the device (a GPU sync every step).
        self.last = {"orth": out.detach(), **{f"orth/{g}": self.weight * v for g, v in groups.items()}}
        return out

    def _live_param(self, t: _Term, live: dict[str, torch.Tensor], fsdp2: bool) -> torch.Tensor:
        """The tensor the model holds for `t` now. `fsdp2`: FSDP2 may hold an unsharded copy between forward and
        backward (root module), which the optimiser never sees: only sharded ones are checked against it."""
        p = live.get(canonical_name(t.name))
        if p is None:
            raise CapvectorError(f"orthogonal regulariser: parameter {t.name!r} is not in the model any more (was the "
                                 f"model wrapped with FSDP1 after the regulariser was built? {engines.FSDP1_FIX}, "
                                 "then build the regulariser from the wrapped model)")
        if not p.requires_grad:
            raise CapvectorError(f"orthogonal regulariser: parameter {t.name!r} no longer requires grad; "
                                 "regularising a frozen weight does nothing")
        checked = self._optimizer_ids is not None and (engines.is_dtensor(p) or not fsdp2)
        if checked and id(p) not in self._optimizer_ids:
            raise CapvectorError(f"orthogonal regulariser: parameter {t.name!r} is not among the tensors the optimiser "
                                 "updates (was the optimiser built before the model was wrapped or sharded?)")
        return p

    def _check_optimizer(self, model: nn.Module) -> None:
        live = {canonical_name(n): p for n, p in model.named_parameters()}
        fsdp2 = engines.uses_fsdp2(model)
        for t in self.terms:
            if not t.captured:
                self._live_param(t, live, fsdp2)

    # ------------------------------------------------------------------ FSDP1: terms computed during the forward
    def _hook_capture(self, t: _Term) -> torch.utils.hooks.RemovableHandle:
        owner_name, leaf = t.name.rsplit(".", 1)
        owner = self._model.get_submodule(owner_name)

        def capture(module: nn.Module, args: object) -> None:
            if torch.is_grad_enabled():  # a training forward: FSDP has gathered the whole weight for this module
                self._captures[t.name] = self._captured_value(t, getattr(module, leaf))

        return owner.register_forward_pre_hook(capture)

    def _captured_value(self, t: _Term, w: torch.Tensor) -> torch.Tensor:
        if not t.consts:  # first forward: these weights are W_meta
            with torch.no_grad():
                t.consts = _term_consts(self._vector, t.key, t.name, w.detach(), self.mode, self._rank)
                t.rows = _row_count(w)
        t.to(w.device)
        return _TERM_LOSS[self.mode](t.consts, _as_matrix(w).to(_work_dtype(w)))

    def _take_capture(self, t: _Term) -> torch.Tensor:
        value = self._captures.pop(t.name, None)
        if value is None:
            raise CapvectorError(f"orthogonal regulariser: parameter {t.name!r} is under FSDP1, where its whole weight "
                                 "exists only during the module's forward; call the regulariser once after each "
                                 "training forward pass (grad enabled), not before it or twice")
        return value

    def breakdown(self) -> dict[str, float]:
        """Weighted total and per-group values of the last call, for logging (this is where the device syncs)."""
        return {k: float(v) for k, v in self.last.items()}

    def extra_repr(self) -> str:
        return f"mode={self.mode}, weight={self.weight}, params={len(self.terms)}, skipped={len(self.skipped)}"


def _combine(whole: list[tuple[str, torch.Tensor]],
             shards: dict[object, list[tuple[str, torch.Tensor]]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total and per-group values; row-shard terms are summed over ranks with one all-reduce per process group.

    The forward value is the global sum on every rank, while the gradient flows only through this rank's own
    terms: each shard's gradient is then exactly ∂L/∂(its rows), with no factor of the world size.
    """
    groups: dict[str, torch.Tensor] = {}  # detached per-group sums, never synchronised here
    total: torch.Tensor | None = None
    for g, v in whole:
        groups[g] = v.detach() if g not in groups else groups[g] + v.detach()
        total = v if total is None else total + v
    for pg, parts in shards.items():
        local = torch.stack([v for _, v in parts]).sum()
        names = sorted({g for g, _ in parts})
        per_group = torch.stack([sum((v.detach() for g2, v in parts if g2 == g), local.new_zeros(()))
                                 for g in names])
        summed = torch.cat([local.detach().reshape(1), per_group])
        if pg is not None:
            import torch.distributed as dist

            dist.all_reduce(summed, group=pg)
        for g, v in zip(names, summed[1:], strict=True):
            groups[g] = v if g not in groups else groups[g] + v
        part = local + (summed[0] - local.detach())
        total = part if total is None else total + part
    assert total is not None
    return total, groups


def _row_count(t: torch.Tensor) -> int:
    return 1 if t.dim() == 1 else int(t.shape[0])


def _build_term(vec: CapabilityVector, key: str, pname: str, param: nn.Parameter, mode: str, rank: int) -> _Term:
    group = group_of(canonical_name(pname))
    if engines.is_fsdp1_name(pname):  # a flat 1-D slice here: bound at the first forward, when FSDP gathers it
        return _Term(pname, key, group, {}, 0, captured=True)
    if engines.is_dtensor(param) and param.dim() >= 2 and mode == "factored":
        # W_meta·V_k from this rank's rows, gathered (rows × k): the whole weight is never gathered.
        shard = engines.row_shard(param, f"orthogonal regulariser: parameter {pname!r}")
        consts = _term_consts(vec, key, pname, shard.local, mode, rank, tuple(param.shape))
        consts["p"] = engines.gather_rows(consts["p"], param)
        return _Term(pname, key, group, consts, int(param.shape[0]))
    whole = param.full_tensor() if engines.is_dtensor(param) else param  # exact mode keeps m×n constants anyway
    return _Term(pname, key, group, _term_consts(vec, key, pname, whole, mode, rank), _row_count(whole))


def _term_consts(vec: CapabilityVector, key: str, pname: str, w: torch.Tensor, mode: str, rank: int,
                 shape: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """The fp32 constants of one term; `w` is the weight or this rank's rows of it (`shape`: the whole weight's)."""
    shape = tuple(w.shape) if shape is None else shape
    dtype = _work_dtype(w)
    if mode == "lora":
        n_in = _as_matrix(w).shape[1]
        vshape = vec.shape(key)
        if len(vshape) < 2 or int(torch.tensor(vshape[1:]).prod()) != n_in:
            raise CapvectorError(
                f"{vec.path}: key {key!r} has shape {vshape}; LoRA A {pname!r} {shape} expects input width {n_in}"
            )
        _, _, vh = _svd_factors(vec, key, rank, w.device)
        return {"a_cap": vh.to(dtype)}
    if vec.shape(key) != shape:
        raise CapvectorError(f"{vec.path}: key {key!r} has shape {vec.shape(key)}, parameter {pname!r} has {shape}")
    w_meta = _as_matrix(w.detach()).to(dtype)
    if mode == "exact":
        return {"c": _as_matrix(vec.dense(key)).to(w.device, dtype), "w_meta": w_meta.clone()}
    u, s, vh = _svd_factors(vec, key, rank, w.device)
    v = vh.T.contiguous().to(dtype)
    return {"us": (u * s).to(dtype), "v": v, "p": w_meta @ v}



class _AbsSumOuter(torch.autograd.Function):
    """Σ_ij |(L Rᵀ)_ij| in row blocks of L, with the gradient computed in the same pass.

    The loss is piecewise linear: its gradient is sign(L Rᵀ)·R for L and sign(L Rᵀ)ᵀ·L for R, and its value is
    the gradient's inner product with the input (Σ_ij s_ij (L Rᵀ)_ij = Σ_ik L_ik (s R)_ik). So each block's
    product is formed once, turned into its sign in place while it is still in cache, and consumed by the
    gradient products; the backward only scales the saved gradients. No m×m product is kept.
    """

    @staticmethod
    def forward(ctx, left: torch.Tensor, right: torch.Tensor, block: int) -> torch.Tensor:  # noqa: ANN001
        need_left, need_right = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_left or need_right):
            return sum(((left[s : s + block] @ right.T).abs().sum() for s in range(0, left.shape[0], block)),
                       right.new_zeros(()))
        g_left = torch.empty_like(left) if need_left else None
        g_right = torch.zeros_like(right) if need_right else None
        for s in range(0, left.shape[0], block):
            rows = left[s : s + block]
            sign = (rows @ right.T).sign_()
            if g_right is not None:
                g_right.addmm_(sign.T, rows)
            if g_left is not None:
                torch.mm(sign, right, out=g_left[s : s + block])
        ctx.save_for_backward(g_left, g_right)
        return (g_left * left).sum() if g_left is not None else (g_right * right).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        g_left, g_right = ctx.saved_tensors
        return (None if g_left is None else grad * g_left, None if g_right is None else grad * g_right, None)


# Elements of the product alive at once. On CPU a block that stays in a core's L2 cache (256 KiB of fp32) while
# its sign is taken and consumed (with the one-pass gradient: 2.05x less time than 16 MiB blocks and a
# recomputing backward, on a 107M model, docs/orthogonal.md#cost).
# On a GPU a few hundred MB, so a weight is one or two blocks (each block costs kernel launches, which dominate
# there at these sizes).
_BLOCK_ELEMS = {"cpu": 1 << 16, "cuda": 1 << 26}


def abs_sum_outer(left: torch.Tensor, right: torch.Tensor, block_elems: int | None = None) -> torch.Tensor:
    """Σ_ij |(left · rightᵀ)_ij| with at most ~`block_elems` elements of the product alive at once."""
    if block_elems is None:
        block_elems = _BLOCK_ELEMS.get(left.device.type, _BLOCK_ELEMS["cpu"])
    return _AbsSumOuter.apply(left, right, max(1, block_elems // max(1, right.shape[0])))


def _work_dtype(param: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 parameters, fp64 for fp64 ones (so gradcheck sees the true function)."""
    return torch.promote_types(param.dtype, torch.float32)


# Each form takes its constants and the weight as a matrix (or a block of its rows with the matching rows of the
# row-indexed constants): every form is a sum over the rows of W, so row blocks add up to the whole.
def _exact(consts: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    return abs_sum_outer(consts["c"], w - consts["w_meta"])


def _factored(consts: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    return abs_sum_outer(consts["us"], w @ consts["v"] - consts["p"])  # Δ V_k, rows × k


def _lora(consts: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    return (consts["a_cap"] @ w.T).abs().sum()


_TERM_LOSS = {"exact": _exact, "factored": _factored, "lora": _lora}


def __getattr__(name: str) -> type:
    """`OrthogonalLossMixin`, the former name of `capvector.integrations.hf_trainer.LossTermsMixin` (which now also
    adds GSE's load-balancing loss), resolved on use so that importing this module loads no integration code."""
    if name == "OrthogonalLossMixin":
        from capvector.integrations.hf_trainer import LossTermsMixin

        return LossTermsMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
