"""One exception type for every user-facing failure, so the CLI can print it and exit non-zero."""

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any


class CapvectorError(Exception):
    """A problem with the user's input or environment, with a message that names file, key and values."""


def first_names(names: Sequence[str], n: int = 5) -> str:
    """The first `n` names, quoted, for an error message that must stay one line however many names there are."""
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return shown + (", ..." if len(names) > n else "")


def reject_unknown_keys(data: Mapping[str, Any], config_type: type, source: str, what: str) -> None:
    """A config read from JSON or options names only fields of the dataclass `config_type`, so a typo fails
    here instead of silently falling back to a default."""
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CapvectorError(f"{source}: unknown {what} keys {unknown}; expected a subset of {sorted(known)}")
