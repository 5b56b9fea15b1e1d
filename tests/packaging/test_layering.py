"""The package's one-way layering, read from the source: library packages never import the command layer."""

from __future__ import annotations

import ast
from pathlib import Path

import capvector

SRC = Path(capvector.__file__).parent
COMMAND_LAYER = ("capvector.commands", "capvector.cli", "capvector.__main__")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_command_layer(module: str) -> bool:
    return any(module == top or module.startswith(top + ".") for top in COMMAND_LAYER)


def test_library_packages_never_import_the_command_layer():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "commands" or rel.name in ("cli.py", "__main__.py"):
            continue
        offenders += [f"{rel}: {m}" for m in sorted(_imported_modules(path)) if _is_command_layer(m)]
    assert not offenders, offenders


def test_the_check_sees_a_command_import(tmp_path):
    """The reader above must catch both import forms (so the test can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from capvector.commands.sim import eval_command\nimport capvector.cli\nfrom capvector import cli\n")
    assert sum(_is_command_layer(m) for m in _imported_modules(bad)) == 3
