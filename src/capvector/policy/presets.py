"""Name globs for the tiny policies' parameter groups, shared by capability-vector selection and PEFT targeting.

Each glob also matches the same name under a PEFT wrapper prefix (e.g. `base_model.model.vlm.…`).
The tiny pi0's groups are LeRobot pi0's (`capvector.integrations.lerobot`): `vlm`, `action_expert`,
`action_heads` (the projections around the two transformers), `vlm+expert` (without those projections)
and `full`, so a recipe written against `pi0:<group>` means the same parts with `tiny-pi0:<group>`.
"""

from __future__ import annotations

from capvector.selection import presets, register_preset


def _globs(*prefixes: str) -> tuple[str, ...]:
    """`p.*` and `*.p.*` for each module prefix (plain and PEFT-wrapped names)."""
    return tuple(g for p in prefixes for g in (f"{p}.*", f"*.{p}.*"))


POLICY_PRESETS: dict[str, tuple[str, ...]] = {
    "vlm": _globs("vlm"),
    "action_expert": _globs("action_expert"),
    "vlm+expert": _globs("vlm", "action_expert"),
}

_DESCRIPTIONS = {
    "vlm": "tiny VLA: image encoder, instruction projection and transformer trunk",
    "action_expert": "tiny VLA: proprio projection, action queries and action head",
    "vlm+expert": "tiny VLA: every parameter (vlm and action expert)",
}

PI0_HEADS = ("state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out", "action_out_proj")
PI0_PRESETS: dict[str, tuple[str, ...]] = {
    "vlm": _globs("vlm"),
    "action_expert": _globs("action_expert"),
    "action_heads": _globs(*PI0_HEADS),
    "vlm+expert": _globs("vlm", "action_expert"),
    "full": _globs("vlm", "action_expert", *PI0_HEADS),
}

_PI0_DESCRIPTIONS = {
    "vlm": "tiny pi0: image encoder, instruction projection and VLM trunk",
    "action_expert": "tiny pi0: the action-expert transformer",
    "action_heads": "tiny pi0: state, noisy-action, time and velocity projections around the two transformers",
    "vlm+expert": "tiny pi0: VLM + action expert (without the projections, as pi0:vlm+expert)",
    "full": "tiny pi0: every parameter",
}

# Module-name suffixes of the transformers' nn.Linear layers, for peft.LoraConfig(target_modules=...).
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


FAMILY = "tiny-vla"
PI0_FAMILY = "tiny-pi0"


def register_policy_presets(replace: bool = False) -> list[str]:
    """Register `tiny-vla:<group>` and `tiny-pi0:<group>` (the integrations' family-prefixed style) and the tiny
    VLA's plain `vlm`, `action_expert`, `vlm+expert` names with capvector.selection; plain names already taken are
    kept unless asked."""
    known = presets()
    added = []
    for name, globs in POLICY_PRESETS.items():
        register_preset(f"{FAMILY}:{name}", list(globs), description=_DESCRIPTIONS[name])
        added.append(f"{FAMILY}:{name}")
        if replace or name not in known:
            register_preset(name, list(globs), description=_DESCRIPTIONS[name])
            added.append(name)
    for name, globs in PI0_PRESETS.items():
        register_preset(f"{PI0_FAMILY}:{name}", list(globs), description=_PI0_DESCRIPTIONS[name])
        added.append(f"{PI0_FAMILY}:{name}")
    return added


register_policy_presets()
