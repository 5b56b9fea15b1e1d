"""Finding weight files in a family's checkpoint directory, with errors that name what was expected."""

from __future__ import annotations

import re
from pathlib import Path

from capvector.errors import CapvectorError


def require_dir(path: Path, family: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CapvectorError(f"{p}: a {family} checkpoint must be a directory")
    return p


def one_match(root: Path, pattern: str, what: str, required: bool) -> Path | None:
    """The single file in `root` whose name fully matches the regex `pattern` (None if optional and absent)."""
    rx = re.compile(pattern)
    hits = sorted(p for p in root.iterdir() if p.is_file() and rx.fullmatch(p.name))
    if len(hits) > 1:
        raise CapvectorError(
            f"{root}: {len(hits)} {what} files match {pattern!r} ({', '.join(h.name for h in hits)}); "
            "keep one checkpoint per directory or pass the file itself"
        )
    if not hits:
        if required:
            raise CapvectorError(f"{root}: no {what} file (expected a name matching {pattern!r})")
        return None
    return hits[0]


def has_weights(root: Path) -> bool:
    """True if `root` itself holds safetensors weights (single or sharded)."""
    return any(p.is_file() and (p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json"))
               for p in root.iterdir())
