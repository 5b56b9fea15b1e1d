"""The tiny reference VLA: patch tokens + instruction token + proprio token + action queries → transformer → actions.

Parameter names are grouped so capability-vector presets can select them by glob:

- `vlm.vision.*`   image encoder (linear patch embedding, positional and camera embeddings)
- `vlm.language.*` projection of the frozen instruction embedding into the trunk width
- `vlm.trunk.*`    transformer blocks; every matrix is an `nn.Linear` named q_proj/k_proj/v_proj/o_proj/
                   up_proj/down_proj so PEFT LoRA (or GSE) can target them by those names
- `action_expert.*` proprio projection, K learned action queries and the L1 action-chunk head

All tokens attend to all tokens (parallel decoding, as in OpenVLA-OFT): the K action-query tokens read
the K-step action chunk out of the trunk in one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_save_safetensors
from capvector.policy.config import PolicyConfig
from capvector.policy.text import InstructionEmbedder, get_embedder

WEIGHTS_NAME = "model.safetensors"


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(x, mask)[0]

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention output and the per-head keys and values (B, heads, T, d/heads) another stream may read;
        `mask` (T, T) bool: True where query row i may attend to key column j (None: everything)."""
        b, t, d = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d)), k, v


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(width, hidden)
        self.down_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg.width, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg.width, int(cfg.width * cfg.mlp_ratio))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_kv(x, mask)[0]

    def forward_kv(self, x: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's output and its attention's keys and values (what a pi0-style action expert attends to)."""
        a, k, v = self.attn.attend(self.norm1(x), mask)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), k, v


class VisionEncoder(nn.Module):
    """Non-overlapping patches → linear embedding, plus learned per-patch position and per-camera embeddings."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.patch = cfg.patch_size
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, cfg.width)
        self.norm = nn.LayerNorm(cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.tokens_per_camera, cfg.width) * 0.02)
        self.camera_embed = nn.Parameter(torch.randn(cfg.num_cameras, cfg.width) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) pixels in [0, 1] → (B, V·N, width), camera-major then row-major patches."""
        b, v, c, hgt, wid = images.shape
        p = self.patch
        x = images.reshape(b, v, c, hgt // p, p, wid // p, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, v, (hgt // p) * (wid // p), c * p * p)
        x = self.norm(self.patch_embed(x * 2.0 - 1.0))
        x = x + self.pos_embed[None, None] + self.camera_embed[None, :, None]
        return x.reshape(b, -1, x.shape[-1])


class LanguageProjector(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.text_dim, cfg.width)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.proj(emb).unsqueeze(1)


class Trunk(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)


def run_trunk(trunk: Trunk, tokens: torch.Tensor, thoughts: torch.Tensor | None = None,
              hidden_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The trunk over (B, T, width) `tokens` → (their normed outputs, every token's hidden state at `hidden_layer`
    or None).

    `thoughts` (B, M, width), training-only latent tokens (capvector.objectives.latent), are appended after
    `tokens`: they attend to every token, no token attends to them, so the outputs for `tokens` are those of a
    pass without them and a policy trained with them acts the same once they are dropped. Their hidden states
    are the captured rows T: .
    """
    n = tokens.shape[1]
    x, mask = tokens, None
    if thoughts is not None:
        x = torch.cat([tokens, thoughts.to(tokens.dtype)], dim=1)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device)
        mask[:n, n:] = False
    captured = x if hidden_layer == 0 else None
    for i, block in enumerate(trunk.layers, start=1):
        x = block(x, mask)
        if hidden_layer == i:
            captured = x
    return trunk.norm(x[:, :n]), captured


class VLM(nn.Module):
    """Everything a capability-vector 'vlm' preset selects: vision, language projection, trunk."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.vision = VisionEncoder(cfg)
        self.language = LanguageProjector(cfg)
        self.trunk = Trunk(cfg)


class ActionExpert(nn.Module):
    """Proprio token, K action queries and the MLP head that reads one action per query."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.proprio_proj = nn.Linear(cfg.proprio_dim, cfg.width)
        self.queries = nn.Parameter(torch.randn(cfg.chunk, cfg.width) * 0.02)
        self.head_fc1 = nn.Linear(cfg.width, cfg.width)
        self.head_fc2 = nn.Linear(cfg.width, cfg.action_dim)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_fc2(F.gelu(self.head_fc1(h)))


@dataclass
class PolicyOutput:
    actions: torch.Tensor  # (B, K, action_dim)
    visual_hidden: torch.Tensor | None  # (B, V·N, width) at the requested layer, else None
    query_hidden: torch.Tensor | None = None  # (B, K, width): the action queries at the same layer
    thought_hidden: torch.Tensor | None = None  # (B, M, width): the latent thought tokens at the same layer


class TinyPolicy(nn.Module):
    """What every tiny policy shares: the instruction embedder, input checks, the `act()` observation format,
    `reset()` and the Hub mixin's save/load hooks. Subclasses set `config` and implement `predict_chunk`."""

    config: PolicyConfig
    # which hidden states `forward(..., hidden_layer=)` can return, for the auxiliary objectives
    hidden_streams: tuple[str, ...] = ("visual",)

    @property
    def embedder(self) -> InstructionEmbedder:
        """The frozen, process-wide cached instruction embedder named in the config (not a submodule)."""
        return get_embedder(self.config.embedder, self.config.text_dim)

    @property
    def device(self) -> torch.device:
        return self.vlm.language.proj.weight.device

    def embed_instructions(self, instructions: list[str] | tuple[str, ...]) -> torch.Tensor:
        return self.embedder(list(instructions)).to(self.device)

    def _check_inputs(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor,
                      hidden_layer: int | None = None, thoughts: torch.Tensor | None = None) -> None:
        c = self.config
        want = (c.num_cameras, 3, c.image_size, c.image_size)
        if image.dim() != 5 or tuple(image.shape[1:]) != want:
            raise CapvectorError(f"policy input 'image': expected (B, {', '.join(map(str, want))}), "
                                 f"found {tuple(image.shape)}")
        b = image.shape[0]
        if tuple(proprio.shape) != (b, c.proprio_dim):
            raise CapvectorError(f"policy input 'proprio': expected ({b}, {c.proprio_dim}), "
                                 f"found {tuple(proprio.shape)}")
        if tuple(text.shape) != (b, c.text_dim):
            raise CapvectorError(f"policy input 'instruction embedding': expected ({b}, {c.text_dim}), "
                                 f"found {tuple(text.shape)}")
        if hidden_layer is not None and not 0 <= hidden_layer <= c.depth:
            raise CapvectorError(f"hidden_layer must be in [0, {c.depth}], found {hidden_layer}")
        if thoughts is not None and (thoughts.dim() != 3 or thoughts.shape[0] != b or thoughts.shape[2] != c.width):
            raise CapvectorError(f"policy input 'thoughts': expected ({b}, M, {c.width}), "
                                 f"found {tuple(thoughts.shape)}")

    @staticmethod
    def _config_of(config_class: type, config: object):
        """`config` as `config_class`: its defaults for None, parsed from a mapping (e.g. the Hub mixin's
        config.json), otherwise as given."""
        if config is None:
            return config_class()
        if isinstance(config, Mapping):
            return config_class.from_dict(dict(config))
        return config

    def predict_chunk(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, K, action_dim) actions for a batch, in eval mode without gradients (what `act()` runs)."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """One unbatched observation (image (V,3,H,W) uint8, proprio (4,), instruction str) → (K, 4) actions."""
        for key in ("image", "proprio", "instruction"):
            if key not in observation:
                raise CapvectorError(f"observation: missing key {key!r}; found keys {sorted(observation)}")
        instruction = observation["instruction"]
        if not isinstance(instruction, str):
            raise CapvectorError(f"observation 'instruction': expected str, found {type(instruction).__name__}")
        image = torch.as_tensor(np.asarray(observation["image"])).unsqueeze(0).to(self.device)
        proprio = torch.as_tensor(np.asarray(observation["proprio"], dtype=np.float32)).unsqueeze(0).to(self.device)
        was_training = self.training
        self.eval()
        try:
            actions = self.predict_chunk(image, proprio, self.embed_instructions([instruction]))
        finally:
            self.train(was_training)
        return actions[0].clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)

    def reset(self) -> None:
        """Start of an episode (the evaluator's policy interface); the policy keeps no history, so nothing to clear."""

    # ---- persistence (PyTorchModelHubMixin hooks) ---------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """Weights as safetensors, written to a temp file then renamed (the mixin writes config.json)."""
        atomic_save_safetensors(self.state_dict(), Path(save_directory) / WEIGHTS_NAME, metadata={"format": "pt"})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs: Any):
        """Local directories only (the toolkit never downloads at run time); strict key and shape check."""
        from capvector.policy.storage import load_policy

        model = load_policy(model_id, map_location=map_location)
        if not isinstance(model, cls):
            raise CapvectorError(f"{model_id}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class TinyVLA(TinyPolicy, PyTorchModelHubMixin, library_name="capvector", tags=["capvector", "vla"]):
    """A few-hundred-thousand to few-million parameter VLA for CPU experiments (see module docstring)."""

    hidden_streams = ("visual", "queries", "thoughts")

    def __init__(self, config: PolicyConfig | dict | None = None) -> None:
        super().__init__()
        self.config = config = self._config_of(PolicyConfig, config)
        self.vlm = VLM(config)
        self.action_expert = ActionExpert(config)
        self.apply(init_linear)

    def forward(
        self,
        image: torch.Tensor,
        proprio: torch.Tensor,
        instruction_embedding: torch.Tensor,
        hidden_layer: int | None = None,
        thoughts: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """Predict the action chunk; optionally also return the visual tokens', action queries' (and `thoughts`')
        hidden states at `hidden_layer`.

        `image` is uint8 (B, V, 3, H, W) (or float in [0, 1]); `hidden_layer` counts like HF hidden states:
        0 is the token embeddings, i the output of block i (1..depth). `thoughts`: training-only latent tokens
        that read the sequence without changing it (`run_trunk`).
        """
        self._check_inputs(image, proprio, instruction_embedding, hidden_layer, thoughts)
        pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        b = pixels.shape[0]
        vis = self.vlm.vision(pixels)
        n_vis = vis.shape[1]
        tokens = torch.cat(
            [
                vis,
                self.vlm.language(instruction_embedding.float()),
                self.action_expert.proprio_proj(proprio.float()).unsqueeze(1),
                self.action_expert.queries.unsqueeze(0).expand(b, -1, -1),
            ],
            dim=1,
        )
        x, captured = run_trunk(self.vlm.trunk, tokens, thoughts, hidden_layer)
        n, k = tokens.shape[1], self.config.chunk
        actions = self.action_expert.head(x[:, -k:])
        if captured is None:
            return PolicyOutput(actions=actions, visual_hidden=None)
        return PolicyOutput(actions=actions, visual_hidden=captured[:, :n_vis], query_hidden=captured[:, n - k:n],
                            thought_hidden=captured[:, n:] if thoughts is not None else None)

    def predict_chunk(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self(image, proprio, text).actions


def init_linear(m: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for every `nn.Linear` (`module.apply(init_linear)`)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None = None,
                denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean of a (B, K, D) per-entry error over real (mask True) steps; padded steps contribute nothing.

    `denominator` replaces the local count of real entries (data-parallel training passes the global
    count divided by the number of processes, so averaging the processes' losses gives the global mean).
    """
    if mask is None:
        return err.mean()
    if tuple(mask.shape) != tuple(err.shape[:2]):
        raise CapvectorError(f"action loss: mask shape {tuple(mask.shape)}, expected {tuple(err.shape[:2])}")
    w = mask.to(err.dtype).unsqueeze(-1)
    if denominator is None:
        denominator = (w.sum() * err.shape[-1]).clamp_min(1.0)
    return (err * w).sum() / denominator


def action_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
              denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean |pred − target| over real (mask True) steps and action dims (`masked_mean`)."""
    if pred.shape != target.shape:
        raise CapvectorError(f"action_l1: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    return masked_mean((pred - target.to(pred.dtype)).abs(), mask, denominator)


def chunk_l1_loss(model: nn.Module, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor,
                  actions: torch.Tensor, mask: torch.Tensor | None, denominator: torch.Tensor | None,
                  hidden_layer: int | None, thoughts: torch.Tensor | None = None
                  ) -> tuple[str, torch.Tensor, PolicyOutput]:
    """TinyVLA's training loss: L1 between the parallel-decoded chunk and the expert's (`model` may be wrapped)."""
    out = model(image, proprio, text, hidden_layer=hidden_layer, thoughts=thoughts)
    return "action_l1", action_l1(out.actions, actions, mask, denominator), out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of scalars in `model` (only those that train, if asked): the figure runs and reports record."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["PolicyOutput", "TinyPolicy", "TinyVLA", "action_l1", "chunk_l1_loss", "count_parameters", "masked_mean"]
