"""One exception type for every user-facing failure, so the CLI can print it and exit non-zero."""

from collections.abc import Sequence


class CapvectorError(Exception):
    """A problem with the user's input or environment, with a message that names file, key and values."""


def first_names(names: Sequence[str], n: int = 5) -> str:
    """The first `n` names, quoted, for an error message that must stay one line however many names there are."""
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return shown + (", ..." if len(names) > n else "")
