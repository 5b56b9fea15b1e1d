"""GSEConfig: the typed, validated VLA-GSE settings that PEFT saves in `adapter_config.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from capvector.errors import CapvectorError

from ._peft_compat import peft_type_member

SCALINGS = ("default", "gradient_balanced")
INIT_TYPES = ("svd", "mgse", "lora")
DROPOUT_MASKS = ("shared", "per_expert")


class GSEConfigError(CapvectorError, ValueError):
    """Invalid GSE setting; a ValueError too, so PEFT and dataclass tooling treat it as bad input."""


def rank_split(r: int, num_experts: int) -> list[int]:
    """Per-expert ranks r_j: r // E each, the first r mod E experts (generalized first) get one more."""
    base, extra = divmod(r, num_experts)
    return [base + (1 if j < extra else 0) for j in range(num_experts)]


@dataclass
class GSEConfig(PeftConfig):
    """VLA-GSE: SVD-initialised generalized + routed specialized low-rank experts (defaults = the paper's).

    `num_experts` counts all experts, generalized included (the reference's meaning: E=8, G=1 gives a
    7-way router), which reproduces the reference's 48,414,720 trainable parameters on Qwen3-VL-4B.
    """

    r: int = field(default=16, metadata={"help": "Total rank over all experts of a layer."})
    num_experts: int = field(default=8, metadata={"help": "Experts per layer, generalized included."})
    num_generalized_experts: int = field(default=1, metadata={"help": "Always-active experts (leading block)."})
    top_k: int = field(default=2, metadata={"help": "Routed specialized experts per token."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input path."})
    dropout_mask: Literal["shared", "per_expert"] = field(
        default="shared", metadata={"help": "'shared': one dropout mask for all experts; 'per_expert': an "
                                            "independent mask per expert (the reference's behaviour)."})
    init_type: Literal["svd", "mgse", "lora"] = field(
        default="svd", metadata={"help": "'svd': experts from W's top-r singular components (the reference's "
                                         "'gse'); 'mgse': from its r smallest; 'lora': random A, zero B, no SVD."})
    eta: float = field(default=1.0, metadata={"help": "η in s_j = sqrt(3·η·n / r_j)."})
    rho: float = field(default=10.0, metadata={"help": "ρ: factors carry 1/ρ of their singular block."})
    init_coefficient: float = field(default=1.0, metadata={"help": "c: share of the initial adapter subtracted "
                                                           "from the layer (1 = exact function preservation)."})
    init_weights: bool = field(default=True, metadata={"help": "PEFT's convention: False moves the factors away "
                                                       "from their anchors at init (random, for tests), so the "
                                                       "adapter does not start as the identity."})
    aux_loss_weight: float = field(default=0.01, metadata={"help": "Weight of the load-balancing loss."})
    scaling: Literal["default", "gradient_balanced"] = field(
        default="default", metadata={"help": "'gradient_balanced': specialized s_j = s_base·mean(tr)/tr_j."})
    scaling_base: float = field(default=2.0, metadata={"help": "s_base for gradient_balanced scaling."})
    svd_niter: int = field(default=2, metadata={"help": "Power iterations of torch.svd_lowrank."})
    svd_seed: int = field(default=42, metadata={"help": "Seed of the randomised SVD (same for every layer)."})
    target_modules: list[str] | str | None = field(
        default="all-linear", metadata={"help": "Module names/regex; 'all-linear' = every Linear but the LM head."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules to skip."})
    target_parameters: list[str] | None = field(default=None, metadata={"help": "Unsupported; must be None."})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Extra fully-trained modules."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Layer list name."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = peft_type_member()
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))
        self._validate()

    @property
    def num_specialized_experts(self) -> int:
        """E − G: the experts the router chooses among."""
        return self.num_experts - self.num_generalized_experts

    def expert_ranks(self) -> list[int]:
        """r_j per expert, generalized first (see `rank_split`)."""
        return rank_split(self.r, self.num_experts)

    def _validate(self) -> None:
        def bad(field_name: str, expected: str, found: object) -> GSEConfigError:
            return GSEConfigError(f"GSEConfig.{field_name}: expected {expected}, found {found!r}")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("r", "num_experts"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer ≥ 1", getattr(self, name))
        if not is_int(self.num_generalized_experts) or not 0 <= self.num_generalized_experts < self.num_experts:
            raise bad("num_generalized_experts", f"an integer in [0, num_experts={self.num_experts})",
                      self.num_generalized_experts)
        if self.r < self.num_experts:
            raise bad("r", f"≥ num_experts={self.num_experts} so every expert gets rank ≥ 1", self.r)
        if not is_int(self.top_k) or not 1 <= self.top_k <= self.num_specialized_experts:
            raise bad("top_k", f"an integer in [1, num_experts − num_generalized_experts = "
                      f"{self.num_specialized_experts}]", self.top_k)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise bad("dropout", "a probability in [0, 1)", self.dropout)
        for name in ("eta", "rho", "scaling_base"):
            if not float(getattr(self, name)) > 0.0:
                raise bad(name, "a number > 0", getattr(self, name))
        if not isinstance(self.init_weights, bool):
            raise bad("init_weights", "True or False", self.init_weights)
        if not float(self.aux_loss_weight) >= 0.0:
            raise bad("aux_loss_weight", "a number ≥ 0", self.aux_loss_weight)
        if self.scaling not in SCALINGS:
            raise bad("scaling", f"one of {SCALINGS}", self.scaling)
        if self.init_type not in INIT_TYPES:
            raise bad("init_type", f"one of {INIT_TYPES}", self.init_type)
        if self.init_type == "lora" and self.scaling == "gradient_balanced":
            raise bad("scaling", "'default' with init_type='lora' (gradient balancing needs singular values)",
                      self.scaling)
        if self.dropout_mask not in DROPOUT_MASKS:
            raise bad("dropout_mask", f"one of {DROPOUT_MASKS}", self.dropout_mask)
        if not is_int(self.svd_niter) or self.svd_niter < 0:
            raise bad("svd_niter", "an integer ≥ 0", self.svd_niter)
        if not is_int(self.svd_seed):
            raise bad("svd_seed", "an integer", self.svd_seed)
        if self.target_parameters is not None:
            raise bad("target_parameters", "None (GSE adapts nn.Linear modules only)", self.target_parameters)
        if self.target_modules is None:
            raise bad("target_modules", "module names, a regex or 'all-linear'", None)
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise bad("layers_to_transform", "None when target_modules is a regex string", self.layers_to_transform)
        if self.layers_pattern and self.layers_to_transform is None:
            raise bad("layers_to_transform", "a value when layers_pattern is set", None)
