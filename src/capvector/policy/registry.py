"""The policy types the toolkit can build, train and load, keyed by the `policy_type` a config names.

One entry per architecture: its model class, config class and training loss. Everything that used to
assume the tiny VLA (the directory loader, the trainer's loss, export, the train and pretrain commands)
asks this registry instead. A config without `policy_type` is a tiny VLA (the shipped θ_pre and every
directory written before the second type existed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from capvector.errors import CapvectorError
from capvector.policy.config import PI0_TYPE, Pi0Config, PolicyConfig
from capvector.policy.model import TinyPolicy, TinyVLA, chunk_l1_loss
from capvector.policy.pi0 import TinyPi0, flow_matching_loss

TYPE_KEY = "policy_type"
DEFAULT_TYPE = "tiny-vla"

# loss(model, image, proprio, text, actions, mask, denominator, hidden_layer) → (name, value, output with hiddens)
PolicyLoss = Callable[..., tuple[str, torch.Tensor, Any]]


@dataclass(frozen=True)
class PolicyType:
    name: str
    model: type[TinyPolicy]
    config: type[PolicyConfig]
    loss: PolicyLoss
    description: str


_TYPES: dict[str, PolicyType] = {}


def register_policy_type(kind: PolicyType) -> PolicyType:
    _TYPES[kind.name] = kind
    return kind


def policy_types() -> dict[str, PolicyType]:
    return dict(_TYPES)


def policy_type(name: str) -> PolicyType:
    if name not in _TYPES:
        raise CapvectorError(f"unknown policy type {name!r}; known: {sorted(_TYPES)}")
    return _TYPES[name]


def type_of(obj: nn.Module | PolicyConfig) -> PolicyType:
    """The registered type of a policy or config (exact class: a pi0 config is also a `PolicyConfig`)."""
    for kind in _TYPES.values():
        if type(obj) in (kind.model, kind.config):
            return kind
    raise CapvectorError(f"{type(obj).__name__} is not a registered policy type ({sorted(_TYPES)})")


def config_from_dict(data: Mapping[str, Any], source: str = "policy config") -> PolicyConfig:
    """A config from JSON fields; `policy_type` picks the class (absent: the tiny VLA), unknown keys are errors."""
    fields = dict(data)
    name = fields.get(TYPE_KEY, DEFAULT_TYPE)
    if not isinstance(name, str):
        raise CapvectorError(f"{source}: {TYPE_KEY} must be a string, found {name!r}")
    kind = policy_type(name)
    if name == DEFAULT_TYPE:
        fields.pop(TYPE_KEY, None)  # the tiny VLA's config has no such field (its files predate it)
    return kind.config.from_dict(fields, source=source)


def build_policy(config: PolicyConfig | None = None) -> TinyPolicy:
    """A freshly initialised policy of the config's type (the tiny VLA's defaults when None)."""
    config = config if config is not None else PolicyConfig()
    return type_of(config).model(config)


register_policy_type(PolicyType(DEFAULT_TYPE, TinyVLA, PolicyConfig, chunk_l1_loss,
                                "OFT-style single trunk, parallel-decoded L1 action chunks"))
register_policy_type(PolicyType(PI0_TYPE, TinyPi0, Pi0Config, flow_matching_loss,
                                "pi0-style VLM + smaller action expert, flow matching"))
