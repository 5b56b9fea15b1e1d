"""PEFT LoRA adapter directories read as low-rank weight updates of the base model's parameters.

An adapter stores, per target module, A (r×in) and B (out×r) with update ΔW = s·B·A, where
s = lora_alpha/r (or lora_alpha/√r with rsLoRA), alpha per module from `alpha_pattern`.
Embeddings store A (r×vocab) and B (dim×r) with ΔW = s·(B·A)ᵀ; `fan_in_fan_out` layers are
transposed too. We return factors (B', A') with ΔW = B'·A' in the parameter's own layout.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from capvector.errors import CapvectorError
from capvector.io.checkpoint import Checkpoint

PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$")
_UNSUPPORTED = ("lora_magnitude_vector", "lora_E", "lora_bias")


@dataclass(frozen=True)
class LoraModule:
    module: str
    a_key: str
    b_key: str
    rank: int
    scale: float
    transposed: bool  # embeddings and fan_in_fan_out layers store ΔWᵀ


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    # PEFT matches a pattern against the end of the module path, on a dot boundary.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_rank(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def validate_adapter_config(path: object, config: dict) -> None:
    """Check the fields of adapter_config.json that the update s·B·A depends on, naming the bad field."""

    def bad(field: str, value: object, expected: str) -> CapvectorError:
        return CapvectorError(f"{path}: adapter_config.json {field} is {value!r}, expected {expected}")

    if not isinstance(config.get("peft_type", "LORA"), str):
        raise bad("peft_type", config["peft_type"], "a string such as 'LORA'")
    if not _is_number(config.get("lora_alpha", 8)):
        raise bad("lora_alpha", config["lora_alpha"], "a finite number")
    if "r" in config and not _is_rank(config["r"]):
        raise bad("r", config["r"], "a positive integer")
    for field in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if not isinstance(config.get(field, False), bool | None):
            raise bad(field, config[field], "true or false")
    for field, ok, what in (("alpha_pattern", _is_number, "finite numbers"), ("rank_pattern", _is_rank, "ranks")):
        patterns = config.get(field) or {}
        if not isinstance(patterns, dict) or not all(ok(v) for v in patterns.values()):
            raise bad(field, patterns, f"an object of module regex -> {what}")
        for key in patterns:
            try:
                re.compile(key)
            except re.error as e:
                raise bad(f"{field} key", key, f"a regular expression ({e})") from None


class LoraAdapter:
    """Parsed LoRA adapter: per-parameter factored updates plus dense (modules_to_save) tensors."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        if checkpoint.kind != "peft-adapter":
            raise CapvectorError(f"{checkpoint.path}: not a PEFT adapter directory")
        self.checkpoint = checkpoint
        config = checkpoint.config() or {}
        validate_adapter_config(checkpoint.path, config)
        self.config = config
        peft_type = config.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise CapvectorError(f"{checkpoint.path}: adapter type {peft_type!r} is not supported (only LORA)")
        if config.get("use_dora"):
            raise CapvectorError(f"{checkpoint.path}: DoRA adapters are not supported (magnitude vectors)")
        self.modules: dict[str, LoraModule] = {}
        self.dense: dict[str, str] = {}  # parameter name -> key in the adapter file
        # PEFT saves the base weights of targeted embeddings (`save_embedding_layers`): copies of θ_pre.
        self.base_copies: dict[str, str] = {}
        parts: dict[str, dict[str, str]] = {}
        for key in checkpoint.keys():
            if any(u in key for u in _UNSUPPORTED):
                raise CapvectorError(f"{checkpoint.path}: key {key!r} belongs to an unsupported LoRA variant")
            name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
            m = _LORA_KEY.match(name)
            if ".base_layer." in name:
                self.base_copies[name.replace(".base_layer.", ".")] = key
            elif m is None:
                self.dense[name] = key
            else:
                parts.setdefault(m["module"], {})[m["part"]] = key
        for module, p in parts.items():
            self.modules[module + ".weight"] = self._module(module, p)

    def _module(self, module: str, p: dict[str, str]) -> LoraModule:
        embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
        a_key = p.get("lora_embedding_A" if embedding else "lora_A")
        b_key = p.get("lora_embedding_B" if embedding else "lora_B")
        if a_key is None or b_key is None:
            raise CapvectorError(f"{self.checkpoint.path}: module {module!r} has only one of LoRA A/B")
        a_shape, b_shape = self.checkpoint.info(a_key).shape, self.checkpoint.info(b_key).shape
        if len(a_shape) != 2 or len(b_shape) != 2 or b_shape[1] != a_shape[0] or a_shape[0] < 1:
            raise CapvectorError(
                f"{self.checkpoint.path}: module {module!r} has A shape {list(a_shape)} and B shape {list(b_shape)}; "
                "expected A r×in and B out×r with the same rank r"
            )
        rank = a_shape[0]
        configured = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config.get("r", rank))
        if configured != rank:
            raise CapvectorError(
                f"{self.checkpoint.path}: module {module!r} has rank {rank} in its tensors but adapter_config.json "
                f"says r = {configured}; the config does not belong to these weights"
            )
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", 8))
        scale = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank
        transposed = embedding or bool(self.config.get("fan_in_fan_out"))
        return LoraModule(module, a_key, b_key, rank, scale, transposed)

    def update_shape(self, name: str) -> tuple[int, ...]:
        mod = self.modules[name]
        out_dim = self.checkpoint.info(mod.b_key).shape[0]
        in_dim = self.checkpoint.info(mod.a_key).shape[1]
        return (in_dim, out_dim) if mod.transposed else (out_dim, in_dim)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B', A') fp32 with the parameter update ΔW = B'·A' in the parameter's layout."""
        mod = self.modules[name]
        a = self.checkpoint.read(mod.a_key).float()
        b = self.checkpoint.read(mod.b_key).float()
        if mod.transposed:
            return a.T.contiguous() * mod.scale, b.T.contiguous()
        return b * mod.scale, a
