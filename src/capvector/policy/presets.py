"""Name globs for the tiny VLA's parameter groups, shared by capability-vector selection and PEFT targeting.

Each glob also matches the same name under a PEFT wrapper prefix (e.g. `base_model.model.vlm.…`).
"""

from __future__ import annotations

from capvector.selection import presets, register_preset

POLICY_PRESETS: dict[str, tuple[str, ...]] = {
    "vlm": ("vlm.*", "*.vlm.*"),
    "action_expert": ("action_expert.*", "*.action_expert.*"),
    "vlm+expert": ("vlm.*", "*.vlm.*", "action_expert.*", "*.action_expert.*"),
}

_DESCRIPTIONS = {
    "vlm": "tiny VLA: image encoder, instruction projection and transformer trunk",
    "action_expert": "tiny VLA: proprio projection, action queries and action head",
    "vlm+expert": "tiny VLA: every parameter (vlm and action expert)",
}

# Module-name suffixes of the trunk's nn.Linear layers, for peft.LoraConfig(target_modules=...).
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


FAMILY = "tiny-vla"


def register_policy_presets(replace: bool = False) -> list[str]:
    """Register `tiny-vla:<group>` (the integrations' family-prefixed style) and the plain `vlm`,
    `action_expert`, `vlm+expert` names with capvector.selection; plain names already taken are kept unless asked."""
    known = presets()
    added = []
    for name, globs in POLICY_PRESETS.items():
        register_preset(f"{FAMILY}:{name}", list(globs), description=_DESCRIPTIONS[name])
        added.append(f"{FAMILY}:{name}")
        if replace or name not in known:
            register_preset(name, list(globs), description=_DESCRIPTIONS[name])
            added.append(name)
    return added


register_policy_presets()
