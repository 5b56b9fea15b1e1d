"""`capvector demo --quick` end to end from the shipped weights: every stage runs (two cores' worth side by side),
the report and results exist, a rerun one stage at a time is fully cached, and `capvector report` regenerates the
same findings; a GSE design-ablation row added with `capvector pipeline --config` runs only its own stages and gains
its report section."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testing_common import run_cli

pytest.importorskip("metaworld")


def _capvector(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    return subprocess.run([sys.executable, "-m", "capvector.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.mark.long
def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    run = _capvector("demo", "--quick", "--run-dir", "run", "--jobs", "2", cwd=tmp_path)  # stages side by side
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "run"
    assert json.loads((out / "pipeline.json").read_text())["jobs"] == 2
    assert (out / "logs" / "cap" / "aux.log").is_file()  # each stage's own output
    results = json.loads((out / "results.json").read_text())
    keys = {f["key"] for f in results["findings"]}
    assert {"cap_aux_beats_sft", "capvector_ood_beats_sft", "gse_beats_lora", "gse_beats_full_ood"} <= keys
    assert set(results["methods"]) >= {"sft", "aux", "capvector", "capvector_no_orth", "tuner-lora", "tuner-gse"}
    for m in ("sft", "capvector"):
        assert results["methods"][m]["budgets"]["40"]["n"] == 4  # 4 tasks × 1 episode × 1 seed
    assert "## Findings against the papers" in (out / "report.md").read_text()
    assert any((out / "videos").glob("*.gif"))

    # The rerun (one stage at a time) and the report in this process: the side-by-side run's markers are the ones it
    # checks, so nothing runs a rollout worker any more.
    monkeypatch.chdir(tmp_path)
    again = run_cli("demo", "--quick", "--run-dir", "run")
    assert again.code == 0, again.stderr[-3000:]
    assert "running" not in again.stdout and again.stdout.count(": cached") >= 20

    regen = run_cli("report", "run")
    assert regen.code == 0, regen.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["findings"] == results["findings"]

    # One VLA-GSE design-ablation row on top (configs/gse_ablation.json's kind): only its fine-tune and rollouts run,
    # every other stage is the cached one, and the report gains the section and the init finding.
    (tmp_path / "ablation.json").write_text(json.dumps({"mode": "quick", "gse_sweep": [{"init_type": "lora"}]}))
    ablation = _capvector("pipeline", "--config", "ablation.json", "--run-dir", "run", cwd=tmp_path)
    assert ablation.returncode == 0, ablation.stdout[-3000:] + ablation.stderr[-3000:]
    ran = [line for line in ablation.stdout.splitlines() if line.endswith(": running")]
    assert ran[0].endswith("VLA-GSE, init_type=lora, seed 0: running"), ran  # the training stage, by its label
    assert len(ran) == 3 and all("tuner-gse[init_type=lora]/seed0/" in line for line in ran[1:]), ran  # rollouts, OOD
    results = json.loads((out / "results.json").read_text())
    row = results["gse_ablations"][1]
    assert row["method"] == "tuner-gse[init_type=lora]" and row["success"]["n"] == 4 and row["trainable_parameters"]
    assert "gse_svd_init_beats_lora_init" in {f["key"] for f in results["findings"]}
    assert "## VLA-GSE design ablations (Table 3)" in (out / "report.md").read_text()
    assert (out / "gse_ablations.png").is_file()
