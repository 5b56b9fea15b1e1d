"""Extract and merge by family: run directories in, the family's weight files and presets used.

Users point at what their trainer wrote (a LeRobot run, an OpenVLA-OFT checkpoint directory, a StarVLA
run); `Family.locate` finds the weights and the family's default preset applies unless one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.integrations._family import Family, families
from capvector.io.hub import resolve_input


def get_family(family: str | Family) -> Family:
    """A registered family by name (``pi0``, ``pi05``, ``smolvla``, ``openpi``, ``openvla-oft``, ``qwen-vla``)."""
    if isinstance(family, Family):
        return family
    known = families()
    if family not in known:
        raise CapvectorError(f"unknown VLA family {family!r}; known: {sorted(known)}")
    return known[family]


def _preset(fam: Family, preset: str | None) -> str:
    short = (preset or fam.default_preset).removeprefix(fam.name + ":")
    if short not in fam.presets:
        raise CapvectorError(f"family {fam.name!r} has no preset {short!r}; its presets: {sorted(fam.presets)}")
    return fam.preset_name(short)


def extract_family(
    family: str | Family, sft: str | Path, aux: str | Path, output: str | Path, *,
    preset: str | None = None, pretrained: str | Path | None = None, **kwargs: Any,
):
    """`capvector.extract` on the weights `family.locate` finds; `preset` is short (`vlm`) or prefixed."""
    from capvector.vectors.extract import extract

    fam = get_family(family)
    pre = fam.locate(resolve_input(pretrained)).main if pretrained is not None else None
    return extract(fam.locate(resolve_input(sft)).main, fam.locate(resolve_input(aux)).main, output, pretrained=pre,
                   preset=_preset(fam, preset), **kwargs)


def merge_family(
    family: str | Family, base: str | Path, vectors: Sequence, output: str | Path, **kwargs: Any
) -> dict:
    """`capvector.merge` into the weights `family.locate` finds in `base` (its other files are copied)."""
    from capvector.vectors.merge import merge

    return merge(get_family(family).locate(resolve_input(base)).main, vectors, output, **kwargs)
