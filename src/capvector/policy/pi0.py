"""The tiny pi0-style policy: a VLM over a prefix of observation tokens and a separate, narrower action-expert
transformer that turns Gaussian noise into an action chunk by flow matching (pi0 / SmolVLA's design, written
for this toolkit at CPU scale).

Parameter names follow the groups of LeRobot's pi0, so its presets' logic carries over (`tiny-pi0:<group>`):

- `vlm.vision.*`, `vlm.language.*`, `vlm.trunk.*`   the VLM (TinyVLA's modules): patch tokens, the instruction
                                                    token and the state token, all attending to each other
- `action_expert.*`  the expert: `layers.{i}.{norm1, attn.{q,k,v,o}_proj, attn.ctx_{k,v}_proj, norm2,
                     mlp.{up,down}_proj}`, `norm`, `pos_embed` (one learned embedding per chunk step)
- `state_proj`, `action_in_proj`, `action_time_mlp_in`, `action_time_mlp_out`, `action_out_proj`   the
                     projections around the two transformers (pi0's `action_heads` group)

The expert reads the VLM's final (normed) prefix tokens: each expert layer projects them to its own keys and
values (`ctx_k_proj`, `ctx_v_proj`) and its action tokens attend to [prefix ; action tokens]. pi0 instead feeds
expert layer i the VLM's layer-i keys/values; at this scale that would leave the VLM's last block output and
final norm without gradient (weights that never move, and DDP's unused-parameter error), while reading the
final tokens trains every VLM weight through the action loss and lets the prefix be computed once per `act()`.

Flow matching, pi0's convention (t = 1 is noise, t = 0 the data):

    x_t = t·ε + (1 − t)·a,   ε ~ N(0, I),   target velocity u = ε − a
    L   = mean over real steps and action dims of (v_θ(x_t, t | obs) − u)²
    t   = 0.001 + 0.999·s,   s ~ Beta(1.5, 1)   (drawn as U^(1/1.5), U ~ Uniform(0, 1); more weight near noise)
    act(): x_1 = ε;  x_{t−1/N} = x_t − (1/N)·v_θ(x_t, t)  for N = `flow_steps` Euler steps, then clip to [-1, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from capvector.errors import CapvectorError
from capvector.policy.config import Pi0Config
from capvector.policy.model import MLP, VLM, TinyPolicy, init_linear, masked_mean, run_trunk

TIME_MIN_PERIOD, TIME_MAX_PERIOD = 4e-3, 4.0  # sinusoidal time embedding: periods spanning t's resolution to > 1
BETA_ALPHA = 1.5
T_MIN = 0.001


class ExpertAttention(nn.Module):
    """Action tokens attend to [prefix context ; action tokens] with the VLM's heads and head size."""

    def __init__(self, width: int, inner: int, heads: int, context_width: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(width, inner)
        self.k_proj = nn.Linear(width, inner)
        self.v_proj = nn.Linear(width, inner)
        self.o_proj = nn.Linear(inner, width)
        self.ctx_k_proj = nn.Linear(context_width, inner)
        self.ctx_v_proj = nn.Linear(context_width, inner)

    def _split(self, y: torch.Tensor) -> torch.Tensor:
        b, t, d = y.shape
        return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def context(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the prefix (computed once per observation, reused by every integration step)."""
        return self._split(self.ctx_k_proj(ctx)), self._split(self.ctx_v_proj(ctx))

    def forward(self, x: torch.Tensor, ctx_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        keys, values = torch.cat([ctx_kv[0], k], dim=2), torch.cat([ctx_kv[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, dropout_p=self.dropout if self.training else 0.0)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class ExpertBlock(nn.Module):
    """Pre-norm block of the action expert."""

    def __init__(self, cfg: Pi0Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.expert_width)
        self.attn = ExpertAttention(cfg.expert_width, cfg.width, cfg.heads, cfg.width, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.expert_width)
        self.mlp = MLP(cfg.expert_width, int(cfg.expert_width * cfg.mlp_ratio))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx_kv))
        return x + self.drop(self.mlp(self.norm2(x)))


class FlowActionExpert(nn.Module):
    """Everything the `action_expert` preset selects: the expert's blocks, final norm and chunk-step embeddings."""

    def __init__(self, cfg: Pi0Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ExpertBlock(cfg) for _ in range(cfg.expert_depth))
        self.norm = nn.LayerNorm(cfg.expert_width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.chunk, cfg.expert_width) * 0.02)

    def context(self, ctx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.attn.context(ctx) for layer in self.layers]

    def forward(self, tokens: torch.Tensor, ctx_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = tokens + self.pos_embed
        for layer, kv in zip(self.layers, ctx_kv, strict=True):
            x = layer(x, kv)
        return self.norm(x)


@dataclass
class FlowOutput:
    velocity: torch.Tensor  # (B, K, action_dim): v_θ(x_t, t)
    visual_hidden: torch.Tensor | None  # (B, V·N, width) at the requested VLM layer, else None
    query_hidden: torch.Tensor | None = None  # the VLM has no action queries: always None
    thought_hidden: torch.Tensor | None = None  # (B, M, width): latent thought tokens at the requested VLM layer


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) times → (B, dim) sin/cos features at periods geometrically spaced over [4e-3, 4]."""
    half = dim // 2
    fraction = torch.arange(half, dtype=torch.float32, device=t.device) / max(1, half - 1)
    period = TIME_MIN_PERIOD * (TIME_MAX_PERIOD / TIME_MIN_PERIOD) ** fraction
    angle = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def sample_time(batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """t = 0.001 + 0.999·s with s ~ Beta(1.5, 1), by inverting its CDF s^1.5 (global RNG unless `generator`)."""
    u = torch.rand(batch, generator=generator)
    return (T_MIN + (1 - T_MIN) * u.pow(1.0 / BETA_ALPHA)).to(device)


class TinyPi0(TinyPolicy, PyTorchModelHubMixin, library_name="capvector", tags=["capvector", "vla", "pi0"]):
    """A CPU-sized pi0-style policy (see the module docstring): same inputs, `act()` and directory layout as
    `TinyVLA`, a flow-matching action expert instead of parallel-decoded queries."""

    hidden_streams = ("visual", "thoughts")

    def __init__(self, config: Pi0Config | dict | None = None) -> None:
        super().__init__()
        self.config = config = self._config_of(Pi0Config, config)
        self.vlm = VLM(config)
        self.state_proj = nn.Linear(config.proprio_dim, config.width)
        self.action_expert = FlowActionExpert(config)
        we = config.expert_width
        self.action_in_proj = nn.Linear(config.action_dim, we)
        self.action_time_mlp_in = nn.Linear(2 * we, we)
        self.action_time_mlp_out = nn.Linear(we, we)
        self.action_out_proj = nn.Linear(we, config.action_dim)
        self.apply(init_linear)

    def prefix(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor,
               hidden_layer: int | None = None, thoughts: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The VLM over [visual | instruction | state] tokens → (final normed tokens, visual tokens and `thoughts`
        at `hidden_layer`, else None); `hidden_layer` counts like `TinyVLA.forward`'s, `thoughts` as there."""
        pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        vis = self.vlm.vision(pixels)
        n_vis = vis.shape[1]
        x = torch.cat([vis, self.vlm.language(text.float()), self.state_proj(proprio.float()).unsqueeze(1)], dim=1)
        ctx, captured = run_trunk(self.vlm.trunk, x, thoughts, hidden_layer)
        if captured is None:
            return ctx, None, None
        return ctx, captured[:, :n_vis], captured[:, x.shape[1]:] if thoughts is not None else None

    def velocity(self, ctx_kv: list[tuple[torch.Tensor, torch.Tensor]], noisy_actions: torch.Tensor,
                 time: torch.Tensor) -> torch.Tensor:
        """v_θ(x_t, t) for (B, K, action_dim) noisy actions at (B,) times, given the prefix's keys/values."""
        a = self.action_in_proj(noisy_actions.float())
        t = time_embedding(time, self.config.expert_width)[:, None].expand(-1, a.shape[1], -1)
        tokens = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([a, t], dim=-1))))
        return self.action_out_proj(self.action_expert(tokens, ctx_kv))

    def forward(self, image: torch.Tensor, proprio: torch.Tensor, instruction_embedding: torch.Tensor,
                noisy_actions: torch.Tensor, time: torch.Tensor, hidden_layer: int | None = None,
                thoughts: torch.Tensor | None = None) -> FlowOutput:
        """The velocity field at (x_t, t) for a batch of observations (the training forward pass)."""
        self._check_inputs(image, proprio, instruction_embedding, hidden_layer, thoughts)
        c, b = self.config, image.shape[0]
        if tuple(noisy_actions.shape) != (b, c.chunk, c.action_dim):
            raise CapvectorError(f"policy input 'noisy_actions': expected ({b}, {c.chunk}, {c.action_dim}), "
                                 f"found {tuple(noisy_actions.shape)}")
        if tuple(time.shape) != (b,):
            raise CapvectorError(f"policy input 'time': expected ({b},), found {tuple(time.shape)}")
        ctx, visual, thought = self.prefix(image, proprio, instruction_embedding, hidden_layer, thoughts)
        return FlowOutput(self.velocity(self.action_expert.context(ctx), noisy_actions, time), visual,
                          thought_hidden=thought)

    def sample_actions(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor,
                       generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        """Integrate dx/dt = v_θ from t = 1 (noise) to t = 0 with `steps` Euler steps (default `flow_steps`);
        the prefix and its keys/values are computed once."""
        self._check_inputs(image, proprio, text)
        c, b = self.config, image.shape[0]
        n = steps if steps is not None else c.flow_steps
        if n <= 0:
            raise CapvectorError(f"flow steps must be positive, found {n}")
        ctx_kv = self.action_expert.context(self.prefix(image, proprio, text)[0])
        x = torch.randn((b, c.chunk, c.action_dim), generator=generator).to(self.device)
        for i in range(n):
            t = torch.full((b,), 1.0 - i / n, device=self.device)
            x = x - self.velocity(ctx_kv, x, t) / n
        return x

    def predict_chunk(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Sampled from noise drawn with a generator seeded by `noise_seed`: the same observation always gives
        the same chunk, so rollouts are reproducible like the deterministic TinyVLA's."""
        with torch.no_grad():
            return self.sample_actions(image, proprio, text, torch.Generator().manual_seed(self.config.noise_seed))


def flow_matching_loss(model: nn.Module, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor,
                       actions: torch.Tensor, mask: torch.Tensor | None, denominator: torch.Tensor | None,
                       hidden_layer: int | None, thoughts: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, time: torch.Tensor | None = None
                       ) -> tuple[str, torch.Tensor, FlowOutput]:
    """TinyPi0's training loss (module docstring); ε and t come from the global RNG (the trainer's seeded,
    checkpointed stream) unless given. `model` may be wrapped (PEFT, DDP): it is called, not inspected."""
    a = actions.float()
    noise = torch.randn_like(a) if noise is None else noise.to(a)
    time = sample_time(a.shape[0], a.device) if time is None else time.to(a)
    t = time[:, None, None]
    out = model(image, proprio, text, t * noise + (1 - t) * a, time, hidden_layer=hidden_layer, thoughts=thoughts)
    return "flow_mse", masked_mean((out.velocity - (noise - a)) ** 2, mask, denominator), out
