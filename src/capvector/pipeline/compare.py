"""The architecture × objective table (CapVector's Finding 4): one row per finished pipeline run, read from its
results.json, so runs made separately (or on other machines) are set side by side without rerunning anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.io.jsonfile import read_json_object
from capvector.objectives.teachers import objective_name
from capvector.pipeline.report import rate_cell

RESULTS = "results.json"
CLAIMS = (("down_aux_beats_sft", "aux-SFT − SFT"), ("capvector_beats_sft", "CapVector − SFT"))


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's results, checked to hold what the table reads."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise CapvectorError(f"{run_dir}: no {RESULTS}; finish the run (`capvector pipeline`) or rebuild it "
                             "(`capvector report`) first")
    res = read_json_object(path, "pipeline results")
    for key in ("config", "methods", "findings"):
        if key not in res:
            raise CapvectorError(f"{path}: missing {key!r}; not a capvector pipeline results file")
    return res


def common_budgets(runs: list[dict[str, Any]]) -> list[int]:
    shared = set.intersection(*(set(r["config"]["down_budgets"]) for r in runs))
    if not shared:
        raise CapvectorError("the runs share no downstream budget: "
                             + "; ".join(f"{r['config']['down_budgets']}" for r in runs))
    return sorted(shared)


def render_comparison(run_dirs: list[str | Path]) -> str:
    """Markdown: per run (architecture × objective), SFT's success and the seed-level tests of aux-SFT and
    CapVector against it at every budget the runs share; then the settings that differ between rows."""
    if not run_dirs:
        raise CapvectorError("compare: give at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    budgets = common_budgets(runs)
    out = ["| policy | objective (teacher) | budget | SFT % | " + " | ".join(label for _, label in CLAIMS) + " |",
           "| --- | --- | --- | --- | " + " | ".join("---" for _ in CLAIMS) + " |"]
    for d, res in zip(run_dirs, runs, strict=True):
        c = res["config"]
        findings = {f["key"]: f for f in res["findings"]}
        for b in budgets:
            cells = []
            for key, _ in CLAIMS:
                f = findings.get(f"{key}@{b}")
                if f is None:
                    raise CapvectorError(f"{d}: results.json has no finding {key}@{b}")
                lo, hi = f["ci95_pp"]
                cells.append(f"{f['diff_pp']:+.1f} pp [{lo:+.1f}, {hi:+.1f}]: **{f['verdict']}**")
            out.append(f"| {c.get('policy', 'tiny-vla')} | {objective_name(c['teacher'])} (`{c['teacher']}`) | {b} | "
                       f"{rate_cell(res['methods']['sft']['budgets'][str(b)])} | " + " | ".join(cells) + " |")
    out += ["", "Differences are means of per-seed differences with a 95% t interval over the training seeds (paired "
            "by seed: same init, data and order); SFT's rate pools the seeds' episodes (Wilson interval).",
            "", "Runs: " + "; ".join(f"`{d}`" for d in run_dirs) + "."]
    differing = _differing_settings(runs)
    if differing:
        out.append("Settings that differ between rows (rows are then not paired with each other; each row's tests "
                   "are): " + "; ".join(f"{k}: {' / '.join(map(str, v))}" for k, v in differing.items()) + ".")
    return "\n".join(out) + "\n"


def _differing_settings(runs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Config fields other than the architecture and the objective that are not the same in every run (fields an
    older run does not record did not exist when it ran, so they are not compared)."""
    keys = sorted(set.intersection(*(set(r["config"]) for r in runs)) - {"policy", "teacher", "pretrained",
                                                                           "vector_preset", "preset_sweep", "mode"})
    values = {k: [r["config"].get(k) for r in runs] for k in keys}
    return {k: v for k, v in values.items() if any(x != v[0] for x in v)}


__all__ = ["read_run", "render_comparison"]
