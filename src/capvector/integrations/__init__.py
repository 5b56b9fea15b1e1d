"""Real VLA families: name presets, checkpoint-file locators and tuner defaults.

Importing this package registers every family's presets (``pi0:vlm``, ``openvla-oft:vlm``,
``qwen-vla:vlm+expert``, ...) with `capvector.selection`. It imports neither torch nor transformers.
"""

from __future__ import annotations

from capvector.errors import CapvectorError
from capvector.integrations._family import Family, FamilyFiles, PresetSpec, families, register_family
from capvector.integrations.lerobot import OPENPI, PI0, PI05, SMOLVLA
from capvector.integrations.openvla_oft import OPENVLA_OFT
from capvector.integrations.qwen_vla import QWEN_VLA


def get_family(name: str) -> Family:
    """A registered family by name (``pi0``, ``pi05``, ``smolvla``, ``openpi``, ``openvla-oft``, ``qwen-vla``)."""
    known = families()
    if name not in known:
        raise CapvectorError(f"unknown VLA family {name!r}; known: {sorted(known)}")
    return known[name]


__all__ = [
    "OPENPI",
    "OPENVLA_OFT",
    "PI0",
    "PI05",
    "QWEN_VLA",
    "SMOLVLA",
    "Family",
    "FamilyFiles",
    "PresetSpec",
    "families",
    "get_family",
    "register_family",
]
