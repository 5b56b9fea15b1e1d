"""Choosing parameters by name: include/exclude globs and named presets.

Presets are a registry so that integrations (OpenVLA-OFT, LeRobot pi0, Qwen-VL...) can add
family-specific selections such as `vlm` or `vlm+expert` without touching this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from capvector.errors import CapvectorError


@dataclass(frozen=True)
class Selection:
    """Names matching any `include` glob and no `exclude` glob."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    preset: str | None = None

    def matches(self, name: str) -> bool:
        return any(fnmatchcase(name, g) for g in self.include) and not any(
            fnmatchcase(name, g) for g in self.exclude
        )

    def filter(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.matches(n)]

    def unmatched_includes(self, names: Iterable[str]) -> list[str]:
        """Include globs that match none of `names`: usually a typo that would silently shrink the selection."""
        names = list(names)
        return [g for g in self.include if not any(fnmatchcase(n, g) for n in names)]

    def to_json(self) -> dict:
        return {"preset": self.preset, "include": list(self.include), "exclude": list(self.exclude)}


@dataclass(frozen=True)
class Preset:
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, include: Sequence[str], exclude: Sequence[str] = (), description: str = "") -> None:
    """Add a named selection (e.g. an integration's `vlm`); re-registering a name replaces it."""
    _PRESETS[name] = Preset(tuple(include), tuple(exclude), description)


def presets() -> dict[str, Preset]:
    return dict(_PRESETS)


def make_selection(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None, preset: str | None = None
) -> Selection:
    """Combine a preset with user globs: user includes replace the preset's, excludes add up."""
    base = Preset(("*",))
    if preset is not None:
        if preset not in _PRESETS:
            raise CapvectorError(f"unknown preset {preset!r}; known presets: {sorted(_PRESETS)}")
        base = _PRESETS[preset]
    inc = tuple(include) if include else base.include
    exc = base.exclude + tuple(exclude or ())
    return Selection(inc, exc, preset)


register_preset("all", ["*"], description="every floating-point tensor present in both fine-tunes")
