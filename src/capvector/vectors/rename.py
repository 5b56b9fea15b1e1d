"""Renaming vector keys by prefix, so a vector from one checkpoint layout merges into another.

A vector extracted from a framework checkpoint (StarVLA: `qwen_vl_interface.model.*`) is keyed by the
framework's names; a plain Hugging Face directory of the same backbone uses the backbone's own names
(`model.language_model.*`, or `model.layers.*` / `visual.*` in the layout Qwen2.5-VL is saved in). A
`PrefixMap` holds rules OLD → NEW; a key takes the rule with the longest OLD that starts it, keys no rule
matches are reported by the caller (never silently dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from capvector.errors import CapvectorError


@dataclass(frozen=True)
class PrefixMap:
    """Ordered prefix rules (OLD, NEW); the longest matching OLD wins, so rule order never matters."""

    rules: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        olds = [old for old, _ in self.rules]
        dup = sorted({o for o in olds if olds.count(o) > 1})
        if dup:
            raise CapvectorError(f"prefix map: source prefix {dup[0]!r} is given more than once")

    @classmethod
    def build(
        cls,
        rules: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        *,
        strip_prefix: str | None = None,
        add_prefix: str | None = None,
    ) -> PrefixMap:
        """`strip_prefix`/`add_prefix` form one rule (strip → add); `rules` adds more (OLD → NEW)."""
        items = list(rules.items() if isinstance(rules, Mapping) else rules or ())
        if strip_prefix is not None or add_prefix is not None:
            items.append((strip_prefix or "", add_prefix or ""))
        return cls(tuple((str(old), str(new)) for old, new in items))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, name: str) -> str | None:
        """The renamed key, or None when no rule's prefix starts `name`."""
        best = max((r for r in self.rules if name.startswith(r[0])), key=lambda r: len(r[0]), default=None)
        return None if best is None else best[1] + name[len(best[0]):]

    def map_names(self, names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """({new name: original key}, [keys no rule matches]); two keys landing on one name is an error."""
        mapped: dict[str, str] = {}
        unmatched: list[str] = []
        for name in names:
            new = self.apply(name)
            if new is None:
                unmatched.append(name)
            elif new in mapped:
                raise CapvectorError(
                    f"prefix map {self.to_json()}: keys {mapped[new]!r} and {name!r} both become {new!r}")
            else:
                mapped[new] = name
        return mapped, unmatched

    def to_json(self) -> dict[str, str]:
        return dict(self.rules)


def parse_prefix_rule(text: str) -> tuple[str, str]:
    """'OLD=NEW' (NEW may be empty) → (OLD, NEW)."""
    if "=" not in text:
        raise CapvectorError(f"--map-prefix {text!r}: expected OLD=NEW, e.g. 'qwen_vl_interface.model.='")
    old, new = text.split("=", 1)
    return old, new
