"""The GSE layer: a frozen Linear plus SVD-initialised experts, all experts computed as one rank-r product.

Why this shape: all experts of a layer together have rank r, so instead of looping over experts and
scattering tokens we stack every expert's factors (A: r×n, B: m×r) and turn routing into a gate on the
rank dimension (each rank component belongs to one expert). The layer is then two matmuls, like LoRA.

Function preservation. The reference subtracts c·Σ_j s_j·B_j·A_j from W, but its forward only adds the
top-k *gated* specialized experts, so at init it does not compute W·x. We keep W untouched and subtract
c times the *initial adapter, gated by the initial router* (frozen "anchor" copies A0, B0, R0, saved
with the adapter):  y = W·x + f_θ(x) − c·f_θ0(x). At init θ = θ0, so y = W·x (c = 1) up to fp32
rounding, and so is ∂y/∂x; the parameter gradients are the reference's (the anchor has no parameters).
The anchor rides in the same two matmuls (rank 2r), so disable/save/load need no base-weight surgery.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from capvector.engines import gathered_weight
from capvector.errors import CapvectorError

from ._peft_compat import BufferDict
from .config import GSEConfig


def top_singular(weight: torch.Tensor, r: int, niter: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Top-r randomised SVD of W (m×n) in fp32, seeded without touching the caller's RNG stream.

    The algorithm and random probe of `torch.svd_lowrank(W, q=r, niter)` (Halko et al. 2009, Alg. 4.4 +
    5.1: range finder with `niter` power iterations, then the SVD of the small r×n projection), written
    out for one reason: LAPACK's SVD of that small matrix returned other last bits with 2 torch threads
    than with 1 (|ΔV| ≈ 3–6·10⁻⁷ at r=16, widths 128–512), which made whole GSE trainings differ by
    thread count (docs/gse.md, "Reproducibility"). Here that step runs in fp64 (cheap: r×n) and is
    rounded to fp32; the large matmuls and QRs stay fp32 (thread-invariant with torch's CPU BLAS, tested
    through the layer). Returns U (m×r), σ (r, descending), V (n×r) with W ≈ U·diag(σ)·Vᵀ.
    """
    w = weight.detach().to(torch.float32)
    tall = w if w.shape[0] >= w.shape[1] else w.T
    devices = [w.device] if w.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        probe = torch.randn(tall.shape[1], r, device=w.device)  # svd_lowrank's first draw after the seed
    basis = torch.linalg.qr(tall @ probe).Q
    for _ in range(niter):
        basis = torch.linalg.qr(tall.T @ basis).Q
        basis = torch.linalg.qr(tall @ basis).Q
    u_small, sigma, vh = torch.linalg.svd((basis.T @ tall).double(), full_matrices=False)
    u, v = basis @ u_small.float(), vh.T.float()
    return (u, sigma.float(), v) if tall is w else (v, sigma.float(), u)


def minor_singular(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, ...]:
    """The r smallest singular triplets of W (m×n) by a full fp64 SVD, as fp32, in descending σ order.

    MiLoRA-style init (`init_type="mgse"`, the reference's minor components): a randomised SVD finds
    only the leading subspace, so this pays for the full decomposition, as the reference does.
    """
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    return u[:, -r:].float(), s[-r:].float(), vh[-r:].T.float()


def initial_factors(weight: torch.Tensor, m: int, n: int,
                    config: GSEConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked A (r×n), B (m×r) and per-rank scales (r) of `config.init_type` for frozen weight W (m×n).

    "svd": expert j carries 1/ρ of its block of W's top-r singular components (the reference's "gse").
    "mgse": the same from the r smallest components. "lora": A kaiming-uniform from the global RNG (as
    `nn.Linear`), B = 0, no SVD (the reference's `skip_svd_init`); W itself is never modified.
    """
    ranks, r = config.expert_ranks(), config.r
    if config.init_type == "lora":
        a = torch.empty(r, n, device=weight.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        scales = torch.tensor([math.sqrt(3.0 * config.eta * n / rj) for rj in ranks])
        rank_scale = torch.repeat_interleave(scales, torch.tensor(ranks)).to(weight.device)
        return a, torch.zeros(m, r, device=weight.device), rank_scale
    with gathered_weight(weight) as whole:  # the whole matrix under FSDP2 / ZeRO-3, read only
        u, sigma, v = (minor_singular(whole, r) if config.init_type == "mgse"
                       else top_singular(whole, r, config.svd_niter, config.svd_seed))
    rank_scale = torch.repeat_interleave(
        expert_scales(sigma, ranks, config.num_generalized_experts, n, config).to(u.device),
        torch.tensor(ranks, device=u.device))
    root = torch.sqrt(sigma.clamp_min(0) / (rank_scale * config.rho))
    return root[:, None] * v.T, u * root[None, :], rank_scale


def expert_scales(sigma: torch.Tensor, ranks: list[int], num_generalized: int, in_features: int,
                  config: GSEConfig) -> torch.Tensor:
    """s_j per expert: sqrt(3·η·n / r_j); with gradient balancing, specialized s_j = s_base·mean(tr)/tr_j.

    tr_j is the sum of expert j's singular values (the reference's trace-inverse rule).
    """
    scales = [math.sqrt(3.0 * config.eta * in_features / rj) for rj in ranks]
    if config.scaling == "gradient_balanced" and len(ranks) > num_generalized:
        blocks = torch.split(sigma.to(torch.float32), ranks)
        traces = torch.stack([b.sum() for b in blocks[num_generalized:]]).to(torch.float64)
        balanced = config.scaling_base * traces.mean() / traces.clamp_min(1e-12)
        scales[num_generalized:] = [float(v) for v in balanced]
    return torch.tensor(scales, dtype=torch.float32)


def route(x: torch.Tensor, router: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax router over specialized experts, top-k kept (renormalised for k > 1, see `gate_from_logits`).

    Returns the dense gate (N×E_s, zeros off the top-k), the log-probabilities and the chosen indices.
    """
    return gate_from_logits(F.linear(x, router), top_k)


def gate_from_logits(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of softmax(logits) as a dense gate; also the log-probabilities and indices.

    k > 1: the kept probabilities are renormalised to sum to 1. k = 1: the raw probability (Switch
    Transformer), because p/Σp would be identically 1 and the router would get no task-loss gradient.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    top_p, top_i = log_probs.exp().topk(top_k, dim=-1)
    weights = top_p if top_k == 1 else top_p / top_p.sum(-1, keepdim=True)
    gate = torch.zeros_like(logits).scatter(-1, top_i, weights)
    return gate, log_probs, top_i


def load_balancing_loss(probs: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
    """Switch-style loss E_s·Σ_j f_j·P_j, f_j = top-k picks of j per token, P_j = mean probability.

    Same normalisation as the reference (Σ_j f_j = k), so it equals k when perfectly balanced.
    """
    counts = torch.bincount(top_i.reshape(-1), minlength=probs.shape[-1])
    return balance_loss_from_counts(probs, counts)


def balance_loss_from_counts(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """`load_balancing_loss` given the top-k pick count of each expert (N×E probabilities, E counts)."""
    num_tokens, num_experts = probs.shape
    return num_experts * torch.sum(counts.to(probs.dtype) / num_tokens * probs.mean(0))


def keep_mask_dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Inverted dropout without the rescaling pass: returns (x with dropped entries zeroed, 1/keep rate).

    Why: on CPU `nn.Dropout` spends most of its time drawing one random float per element (at width 128
    it was the largest single cost of a GSE layer). Here each element gets 16 random bits (four per
    64-bit draw) and is kept when they clear a threshold, so p is rounded to a multiple of 2^-16
    (|Δp| ≤ 7.7e-6); the caller folds the returned 1/keep factor into a small weight instead of
    rescaling the N×n input. The mask comes from the global RNG, like `nn.Dropout`.
    """
    keep = round((1.0 - p) * 65536)
    if keep >= 65536:
        return x, 1.0
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
    kept = bits.view(torch.int16)[:n].view(x.shape) >= 32768 - keep  # P = keep / 65536
    return x * kept, 65536.0 / keep


def per_expert_dropout_product(x: torch.Tensor, both_a: torch.Tensor, ranks: list[int],
                               p: float) -> tuple[torch.Tensor, float]:
    """[A; A0]·x̃_j with an independent dropout mask x̃_j per expert j (`dropout_mask="per_expert"`).

    `both_a` is the stacked (2r×n) [A; A0]; expert j's rows in both halves see the same x̃_j, so the
    anchor still cancels at init. Returns the N×2r product in the stacked column order and 1/keep.
    One masked copy of x and one rank-2r_j matmul per expert: E draws and E× the input-side traffic
    of the shared mask, the price of the reference's per-expert `nn.Dropout` (only in training).
    """
    r = sum(ranks)
    parts, order, inv_keep, start = [], [], 1.0, 0
    for rj in ranks:
        rows = list(range(start, start + rj)) + list(range(r + start, r + start + rj))
        dropped, inv_keep = keep_mask_dropout(x, p)
        parts.append(F.linear(dropped, both_a[rows]))
        order += rows
        start += rj
    return torch.cat(parts, dim=1)[:, torch.argsort(torch.tensor(order, device=x.device))], inv_keep


def gate_map(ranks: list[int], num_generalized: int) -> torch.Tensor:
    """Constant (2·E_s + 1)×2r 0/1 matrix that spreads the stacked expert gates onto the stacked ranks.

    Row b·E_s + e is specialized expert e of branch b (0 = current, 1 = anchor); it has ones on that
    expert's ranks in that branch's half. The last row marks the generalized ranks of both halves. A
    gate (N×2E_s) times the first 2E_s rows is then the per-rank gate with no gather, and each output is
    one gate times 1 plus zeros, so exactly the gate.
    """
    r, num_spec = sum(ranks), len(ranks) - num_generalized
    out = torch.zeros(2 * num_spec + 1, 2 * r)
    start = 0
    for j, rj in enumerate(ranks):
        for branch in range(2):
            row = 2 * num_spec if j < num_generalized else branch * num_spec + j - num_generalized
            out[row, branch * r + start: branch * r + start + rj] = 1.0
        start += rj
    return out


class GSELayer(BaseTunerLayer):
    """Adapter state of one layer, keyed by adapter name as PEFT expects (several adapters may coexist)."""

    adapter_layer_names = ("gse_A", "gse_B", "gse_router")
    other_param_names = ("gse_A0", "gse_B0", "gse_router0", "gse_scale", "gse_gate_map", "gse_dropout",
                         "gse_ranks", "gse_settings")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.gse_A = nn.ParameterDict()
        self.gse_B = nn.ParameterDict()
        self.gse_router = nn.ParameterDict()
        self.gse_A0 = BufferDict(persistent=True)
        self.gse_B0 = BufferDict(persistent=True)
        self.gse_router0 = BufferDict(persistent=True)
        self.gse_scale = BufferDict(persistent=True)
        self.gse_gate_map = BufferDict(persistent=False)
        self.gse_dropout = nn.ModuleDict()
        self.gse_ranks: dict[str, list[int]] = {}
        self.gse_settings: dict[str, dict[str, float | bool]] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        # per adapter, current branch of the last forward: logits, probabilities (with grad), top-k mask
        self._last_route: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise CapvectorError(f"GSE adapts torch.nn.Linear only; found {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(self, adapter_name: str, config: GSEConfig) -> None:
        """Add adapter `adapter_name`: SVD of the frozen weight, expert factors, router and anchors."""
        weight = self.get_base_layer().weight
        m, n = self.out_features, self.in_features  # a ZeRO-3 partition's own shape is (0,)
        ranks, g = config.expert_ranks(), config.num_generalized_experts
        r, num_spec = config.r, config.num_specialized_experts
        if min(m, n) < r:
            raise CapvectorError(f"GSEConfig.r: expected ≤ min(out, in) = {min(m, n)} for this layer, found {r}")
        # the router draws from the global RNG before any factor does, so every init_type gets the same router
        router = torch.empty(num_spec, n, device=weight.device, dtype=torch.float32)
        if weight.device.type == "meta":  # structure only (e.g. low_cpu_mem_usage loading): weights come later
            a = torch.empty(r, n, device="meta")
            b = torch.empty(m, r, device="meta")
            rank_scale = torch.empty(r, device="meta")
        else:
            nn.init.kaiming_uniform_(router, a=math.sqrt(5))  # nn.Linear's default init, as the reference
            a, b, rank_scale = initial_factors(weight, m, n, config)
        self.gse_A0[adapter_name] = a.detach().clone()
        self.gse_B0[adapter_name] = b.detach().clone()
        if not config.init_weights and a.device.type != "meta":  # start away from the anchors (tests)
            a_rms = a.square().mean().sqrt()
            b_rms = b.square().mean().sqrt()
            a = a + a_rms * torch.randn_like(a)
            b = b + (b_rms if b_rms > 0 else a_rms) * torch.randn_like(b)  # init_type "lora": B starts at 0
        self.gse_A[adapter_name] = nn.Parameter(a.contiguous())
        self.gse_B[adapter_name] = nn.Parameter(b.contiguous())
        self.gse_router[adapter_name] = nn.Parameter(router)
        self.gse_router0[adapter_name] = router.detach().clone()
        self.gse_scale[adapter_name] = rank_scale
        self.gse_gate_map[adapter_name] = gate_map(ranks, g).to("cpu" if a.device.type == "meta" else a.device)
        self.gse_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.gse_ranks[adapter_name] = list(ranks)
        self.gse_settings[adapter_name] = {"num_generalized": g, "top_k": config.top_k,
                                           "init_coefficient": float(config.init_coefficient),
                                           "per_expert_dropout": config.dropout_mask == "per_expert"}
        self.set_adapter(self.active_adapters)

    def cast_adapter(self, adapter_name: str, dtype: torch.dtype) -> None:
        """Cast adapter `adapter_name`'s floating tensors (factors, router, anchors, scales) to `dtype`.

        Done once from fp32 (never through a lower precision first), so factors and anchors stay equal
        and the init stays exact in any dtype.
        """
        for holder in (self.gse_A, self.gse_B, self.gse_router, self.gse_A0, self.gse_B0, self.gse_router0,
                       self.gse_scale, self.gse_gate_map):
            if adapter_name in holder and holder[adapter_name].dtype != dtype:
                item = holder[adapter_name]
                cast = item.detach().to(dtype)
                holder[adapter_name] = nn.Parameter(cast, requires_grad=item.requires_grad) \
                    if isinstance(item, nn.Parameter) else cast

    # ---- forward -------------------------------------------------------------------------------------
    def adapter_delta(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """f_θ(x) − c·f_θ0(x), in the adapter's dtype (fp32): what this adapter adds to the base output.

        Current and initial branch run stacked, so a layer is a fixed handful of ops whatever E is:
        one router matmul for both branches, one softmax and one top-k over the (2, E_s, N) logits,
        the per-rank gate as one small matmul with the constant `gate_map` (no gather), and two
        rank-2r matmuls with the per-rank scales folded into the B side (m×2r, not N×2r). At init the two
        branches have equal weights, so they pick the same experts and cancel to rounding.
        """
        a, b, router = self.gse_A[adapter], self.gse_B[adapter], self.gse_router[adapter]
        settings = self.gse_settings[adapter]
        num_spec = router.shape[0]
        flat = x.to(a.dtype).reshape(-1, self.in_features)
        # experts × tokens layout (2, E_s, N): softmax and the renormalising sum reduce over a short axis
        # whose elements are N apart, so every step runs vectorised along the tokens (13× faster than a
        # softmax over a last axis of 7 on CPU)
        logits = torch.mm(torch.cat([router, self.gse_router0[adapter]]), flat.t()).view(2, num_spec, -1)
        probs = torch.softmax(logits, dim=1)
        top_k = int(settings["top_k"])
        picked = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, probs.detach().topk(top_k, dim=1)[1], True)
        gate = probs * picked
        if top_k > 1:  # renormalise over the top-k; k = 1 keeps the raw probability (see `gate_from_logits`)
            gate = gate / gate.sum(1, keepdim=True)
        self._last_route[adapter] = (logits[0].t(), probs[0].t(), picked[0].t())  # token-major views
        g = int(settings["num_generalized"])
        gen_value = 0.0 if (adapter in self.merged_adapters or g == 0) else 1.0 / g
        spread = self.gse_gate_map[adapter]
        rank_gates = torch.addmm(spread[-1] * gen_value, gate.view(2 * num_spec, -1).t(), spread[:-1])  # N×2r
        drop = self.gse_dropout[adapter]
        both_a = torch.cat([a, self.gse_A0[adapter]])
        if not (isinstance(drop, nn.Dropout) and drop.training):
            h, inv_keep = F.linear(flat, both_a), 1.0
        elif settings["per_expert_dropout"]:
            h, inv_keep = per_expert_dropout_product(flat, both_a, self.gse_ranks[adapter], drop.p)
        else:
            dropped, inv_keep = keep_mask_dropout(flat, drop.p)
            h = F.linear(dropped, both_a)
        scale = self.gse_scale[adapter] * inv_keep if inv_keep != 1.0 else self.gse_scale[adapter]
        scaled_b = torch.cat([b * scale, self.gse_B0[adapter] * (-settings["init_coefficient"] * scale)], dim=1)
        out = F.linear(h * rank_gates, scaled_b)
        return out.reshape(*x.shape[:-1], self.out_features)

    # ---- merge ---------------------------------------------------------------------------------------
    def generalized_delta(self, adapter: str) -> torch.Tensor:
        """ΔW of the generalized experts (input-independent), fp32: (1/G)·Σ_gen s·(B·A − c·B0·A0)."""
        g = int(self.gse_settings[adapter]["num_generalized"])
        r_gen = sum(self.gse_ranks[adapter][:g])
        if g == 0:
            return torch.zeros(self.out_features, self.in_features, device=self.gse_A[adapter].device)
        s = self.gse_scale[adapter][:r_gen].float()
        c = self.gse_settings[adapter]["init_coefficient"]
        a, b = self.gse_A[adapter][:r_gen].float(), self.gse_B[adapter][:, :r_gen].float()
        a0, b0 = self.gse_A0[adapter][:r_gen].float(), self.gse_B0[adapter][:, :r_gen].float()
        return ((b * s) @ a - c * ((b0 * s) @ a0)) / g

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the generalized experts into the base weight (the routed ones stay input-dependent)."""
        weight = self.get_base_layer().weight
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.gse_A:
                continue
            with torch.no_grad():
                merged = weight.float() + self.generalized_delta(adapter)
                if safe_merge and not torch.isfinite(merged).all():
                    raise CapvectorError(f"GSE merge of adapter {adapter!r}: non-finite weights; not merged")
                weight.copy_(merged.to(weight.dtype))
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Undo `merge` (exact in fp32 up to rounding; in bf16 the base weight keeps bf16 rounding)."""
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.gse_A:
                with torch.no_grad():
                    weight.copy_((weight.float() - self.generalized_delta(adapter)).to(weight.dtype))

    # ---- statistics ----------------------------------------------------------------------------------
    def forget_routing(self) -> None:
        """Drop the kept routing (called at the start of each model forward by `GSEModel`)."""
        self._last_route.clear()

    def routing(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The last forward's routing: router probabilities (tokens × experts, with grad) and the top-k picks
        (tokens × experts, 0/1); None before any forward. What load-balancing losses are computed from."""
        if adapter not in self._last_route:
            return None
        _, probs, picked = self._last_route[adapter]
        return probs, picked

    def aux_loss(self, adapter: str) -> torch.Tensor | None:
        """Load-balancing loss of the last forward (unweighted, with grad), or None before any forward.

        Computed on request from the kept routing, so forwards that nobody asks about cost nothing extra.
        """
        route = self.routing(adapter)
        return None if route is None else balance_loss_from_counts(route[0], route[1].sum(0))

    def router_stats(self, adapter: str) -> dict[str, torch.Tensor] | None:
        """Expert load (fractions of top-k picks) and mean router entropy (nats) of the last forward."""
        if adapter not in self._last_route:
            return None
        logits, _, picked = (t.detach() for t in self._last_route[adapter])
        counts = picked.sum(0).to(torch.float32)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        return {"load": counts / counts.sum(), "entropy": entropy.float()}


class GSELinear(nn.Module, GSELayer):
    """A frozen nn.Linear with a GSE adapter."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GSEConfig, **kwargs: Any) -> None:
        super().__init__()
        GSELayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter in self.gse_A:
                result = result + self.adapter_delta(adapter, x).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "gse." + super().__repr__()
