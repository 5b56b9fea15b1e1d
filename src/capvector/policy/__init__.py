"""The tiny reference VLA used by the embedded benchmark, and the parameter-group presets that select its parts."""

from capvector.policy.config import PolicyConfig
from capvector.policy.model import (
    PolicyOutput,
    TinyVLA,
    action_l1,
    count_parameters,
    load_policy,
    read_policy_config,
    save_policy,
)
from capvector.policy.presets import LORA_TARGETS, POLICY_PRESETS, register_policy_presets

__all__ = [
    "LORA_TARGETS",
    "POLICY_PRESETS",
    "PolicyConfig",
    "PolicyOutput",
    "TinyVLA",
    "action_l1",
    "count_parameters",
    "load_policy",
    "read_policy_config",
    "register_policy_presets",
    "save_policy",
]
