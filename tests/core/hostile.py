"""Helpers for hostile-input tests: the promised failure contract, untouched inputs, crafted safetensors files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from testing_common import CliResult


def assert_user_error(r: CliResult, *fragments: str) -> None:
    """Exit 2 with exactly one line on stderr that mentions every fragment."""
    assert r.code == 2, (r.code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def leftovers(out: Path) -> list[str]:
    """The target and any hidden sibling a run made for it (partials, temp files, old copies)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}."))


def tree_digest(*roots: Path) -> dict[str, str]:
    """Content hash and mode of every file under `roots`: equal before and after means untouched."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


def raw_safetensors(path: Path, header: object, data: bytes = b"", header_bytes: bytes | None = None) -> Path:
    """A safetensors file with exactly this header (any JSON, valid or not) and data section."""
    import json
    import struct

    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path
