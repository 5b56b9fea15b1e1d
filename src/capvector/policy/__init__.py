"""The tiny policies the embedded benchmark trains (an OFT-style VLA and a pi0-style flow-matching policy), their
registry, directory format and the parameter-group presets that select their parts."""

from capvector.policy.config import PI0_TYPE, Pi0Config, PolicyConfig
from capvector.policy.model import (
    PolicyOutput,
    TinyPolicy,
    TinyVLA,
    action_l1,
    count_parameters,
    masked_mean,
)
from capvector.policy.pi0 import FlowOutput, TinyPi0, flow_matching_loss
from capvector.policy.presets import (
    LORA_TARGETS,
    PI0_PRESETS,
    POLICY_PRESETS,
    register_policy_presets,
)
from capvector.policy.registry import (
    PolicyType,
    build_policy,
    config_from_dict,
    policy_type,
    policy_types,
    type_of,
)
from capvector.policy.storage import load_policy, read_policy_config, save_policy

__all__ = [
    "LORA_TARGETS",
    "PI0_PRESETS",
    "PI0_TYPE",
    "POLICY_PRESETS",
    "FlowOutput",
    "Pi0Config",
    "PolicyConfig",
    "PolicyOutput",
    "PolicyType",
    "TinyPi0",
    "TinyPolicy",
    "TinyVLA",
    "action_l1",
    "build_policy",
    "config_from_dict",
    "count_parameters",
    "flow_matching_loss",
    "load_policy",
    "masked_mean",
    "policy_type",
    "policy_types",
    "read_policy_config",
    "register_policy_presets",
    "save_policy",
    "type_of",
]
