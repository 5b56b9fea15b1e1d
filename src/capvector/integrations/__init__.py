"""Real VLA families: name presets, checkpoint-file locators and tuner defaults.

Importing this package registers every family's presets (``pi0:vlm``, ``openvla-oft:vlm``,
``qwen-vla:vlm+expert``, ...) with `capvector.selection`. It imports neither torch nor transformers.
"""

from __future__ import annotations

from capvector.integrations._family import Family, FamilyFiles, PresetSpec, families, register_family
from capvector.integrations.api import extract_family, get_family, merge_family
from capvector.integrations.lerobot import OPENPI, PI0, PI05, SMOLVLA
from capvector.integrations.openvla_oft import OPENVLA_OFT
from capvector.integrations.qwen_vla import QWEN_VLA

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
    "extract_family",
    "families",
    "get_family",
    "merge_family",
    "register_family",
]
