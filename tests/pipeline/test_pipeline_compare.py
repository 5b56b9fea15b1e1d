"""`capvector compare`: finished runs' results side by side, one row per architecture × objective and budget."""

from __future__ import annotations

import json

from testing_common import run_cli


def _finding(key: str, diff: float, lo: float, hi: float, verdict: str) -> dict:
    return {"key": key, "diff_pp": diff, "ci95_pp": [lo, hi], "verdict": verdict}


def _write_run(path, policy: str, teacher: str, budgets: list[int], sft_pc: float, aux: float, cap: float,
               seeds: list[int]) -> None:
    path.mkdir()
    findings = []
    for b in budgets:
        findings += [_finding(f"down_aux_beats_sft@{b}", aux, aux - 9, aux + 9, "not shown (not significant)"),
                     _finding(f"capvector_beats_sft@{b}", cap, cap - 4, cap - 1, "contradicted")]
    sft = {str(b): {"pc": sft_pc, "ci95": [sft_pc - 7, sft_pc + 7], "n": 200} for b in budgets}
    config = {"policy": policy, "teacher": teacher, "down_budgets": budgets, "seeds": seeds, "mode": "default"}
    (path / "results.json").write_text(json.dumps({"config": config, "methods": {"sft": {"budgets": sft}},
                                                   "findings": findings}))


def test_rows_per_run_at_the_shared_budgets_and_the_settings_that_differ(tmp_path):
    _write_run(tmp_path / "a", "tiny-vla", "foundation", [150, 400], 40.0, 11.0, -5.0, [0, 1, 2, 3, 4])
    _write_run(tmp_path / "b", "tiny-pi0", "latent-reasoning", [150], 22.5, -3.5, -8.0, [0, 1, 2, 3, 5])
    newer = json.loads((tmp_path / "b" / "results.json").read_text())
    newer["config"]["forgetting"] = False
    (tmp_path / "b" / "results.json").write_text(json.dumps(newer))
    r = run_cli("compare", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "table.md")
    assert r.code == 0, r.stderr
    table = (tmp_path / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny-")]
    assert len(rows) == 2  # 400 steps is not shared
    assert rows[0].startswith("| tiny-vla | spatial alignment (`foundation`) | 150 | 40.0 [33, 47] (n=200) | "
                              "+11.0 pp [+2.0, +20.0]: **not shown (not significant)** | -5.0 pp [-9.0, -6.0]")
    assert rows[1].startswith("| tiny-pi0 | latent reasoning (`latent-reasoning`) | 150 | 22.5 [16, 30] (n=200) | "
                              "-3.5 pp [-12.5, +5.5]")
    assert "seeds: [0, 1, 2, 3, 4] / [0, 1, 2, 3, 5]" in table and "down_budgets" in table
    assert "forgetting" not in table  # a field one run does not record is not a difference
    assert table in r.stdout


def test_unfinished_or_unrelated_runs_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("compare", tmp_path / "empty")
    assert r.code == 2 and "no results.json; finish the run" in r.stderr
    _write_run(tmp_path / "a", "tiny-vla", "foundation", [150], 40.0, 1.0, 1.0, [0])
    _write_run(tmp_path / "b", "tiny-vla", "subgoal", [400], 40.0, 1.0, 1.0, [0])
    r = run_cli("compare", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "t.md")
    assert r.code == 2 and "share no downstream budget" in r.stderr and not (tmp_path / "t.md").exists()
