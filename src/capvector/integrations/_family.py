"""What an integration knows about one VLA family, as plain data.

A `Family` holds the family's name presets (registered as ``<family>:<preset>`` so families never
clash), how to find its weight files in a checkpoint directory, and the default targets of the
orthogonal regulariser and of the GSE tuner. Nothing here imports torch or transformers: the data is
consumed by `capvector.selection`, the regulariser and the GSE tuner, which import what they need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from capvector.selection import register_preset


@dataclass(frozen=True)
class PresetSpec:
    """Include/exclude globs over parameter names, and why this set is useful."""

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class FamilyFiles:
    """Where a family's weights live inside one checkpoint directory.

    `main` is what `capvector.extract`/`merge` read (a directory or one weight file); `components`
    are extra weight files the family writes beside it (e.g. OpenVLA-OFT's action head), by role.
    """

    main: Path
    components: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """Presets, file locator and tuner defaults of one VLA family."""

    name: str
    description: str
    presets: dict[str, PresetSpec]
    locate: Callable[[Path], FamilyFiles]
    # globs over parameter names: the weight matrices the orthogonal regulariser constrains
    orth_targets: tuple[str, ...]
    # PEFT `target_modules` (a full-match regex over module names) for the GSE tuner
    gse_target_modules: str
    # the corresponding module-name suffixes, for tuners or users that want a list
    gse_target_suffixes: tuple[str, ...] = ()
    default_preset: str = "vlm+expert"

    def preset_name(self, preset: str) -> str:
        """The registered (family-prefixed) name of one of this family's presets."""
        return f"{self.name}:{preset}"

    def register(self) -> None:
        for short, spec in self.presets.items():
            register_preset(self.preset_name(short), spec.include, spec.exclude, spec.description)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Remember a family and register its presets (re-registering replaces it)."""
    family.register()
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    return dict(_FAMILIES)
