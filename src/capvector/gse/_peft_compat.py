"""The only place that touches PEFT internals: adding `PeftType.GSE` and registering the tuner.

PEFT 0.21 only registers methods whose name is already a member of its `PeftType` enum, so a tuner
living outside PEFT must add that member itself. Enum members cannot be added through public API;
we insert one the way `enum` itself builds members. `tests/gse/test_gse_peft_compat.py` checks this
against the installed PEFT and fails loudly when PEFT changes. Tested range: TESTED_PEFT below.
"""

from __future__ import annotations

import peft
from peft.tuners._buffer_dict import BufferDict  # noqa: F401  (re-exported: PEFT's dtype casting knows this type)
from peft.utils.peft_types import PeftType

from capvector.errors import CapvectorError

TESTED_PEFT = ((0, 21, 2), (0, 22, 0))  # [low, high): the range whose internals this module was written against
GSE_NAME = "gse"


def peft_version() -> tuple[int, int, int]:
    """Installed PEFT version as a tuple (pre-release suffixes ignored)."""
    parts = []
    for piece in peft.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def peft_type_member(name: str = GSE_NAME) -> PeftType:
    """Return `PeftType.<NAME>`, adding it to the enum if missing (str-valued, like PEFT's own members)."""
    key = name.upper()
    existing = PeftType._member_map_.get(key)
    if existing is not None:
        return existing  # type: ignore[return-value]
    member = str.__new__(PeftType, key)
    member._name_ = key
    member._value_ = key
    member.__objclass__ = PeftType  # type: ignore[attr-defined]
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    type.__setattr__(PeftType, key, member)
    return member


def register(config_cls: type, model_cls: type) -> PeftType:
    """Register GSE with PEFT once (idempotent, so re-imports and reloads are harmless)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    member = peft_type_member()
    if member in PEFT_TYPE_TO_TUNER_MAPPING:
        if PEFT_TYPE_TO_TUNER_MAPPING[member].__name__ != model_cls.__name__:
            raise CapvectorError(f"PEFT method {GSE_NAME!r} is already registered by "
                                 f"{PEFT_TYPE_TO_TUNER_MAPPING[member]!r}; expected {model_cls!r}")
        PEFT_TYPE_TO_CONFIG_MAPPING[member] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[member] = model_cls
        return member
    register_peft_method(name=GSE_NAME, config_cls=config_cls, model_cls=model_cls, prefix="gse_")
    return member
