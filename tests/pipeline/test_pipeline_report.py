"""Results and report from a fabricated finished run: pooled counts, intervals, verdicts, tables and plots."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline import CONFIG_FILE, PipelineConfig, regenerate_report
from capvector.pipeline.config import MODE_SETTINGS
from capvector.pipeline.recipe import DemoGraph, method_label
from capvector.pipeline.report import PLOTS, _gse_ablation_section, rate_cell, render_markdown
from capvector.pipeline.results import verdict
from capvector.pipeline.stages import MARKER, StageRunner
from capvector.policy import PolicyConfig, TinyVLA, save_policy
from capvector.stats import newcombe_difference, wilson_interval

EPISODES = 10  # per (variant) in each fabricated evaluation
SEEDS = (0, 1, 2, 3, 4)
# Successes out of EPISODES per method at each budget index; CapVector is made clearly better than SFT.
SUCCESS = {"sft": [1, 2], "aux": [2, 3], "capvector": [4, 7], "capvector_no_orth": [4, 6], "tuner-lora": [3],
           "tuner-gse": [5], "capvector@weight=0.5": [2], "capvector@tiny-vla-vlm": [3],
           "capvector[dcap=camera:0.5+colors:0.5]": [5, 9], "tuner-gse[init_type=lora]": [3],
           "tuner-gse[init_type=mgse]": [5], "tuner-gse[num_experts=4]": [6]}
# Trainable parameters each training run records (methods not named: 1000); with 4 experts the router is smaller.
PARAMS = {"tuner-gse[num_experts=4]": 952}
# Successes out of EPISODES on the pretraining tasks after each method's fine-tune (θ_pre: PRETRAIN_REFERENCE;
# methods not named: 5).
PRETRAIN_REFERENCE = 8
PRETRAIN = {"sft": 4, "aux": 5, "capvector": 6, "tuner-lora": 7, "tuner-gse": 7}


def _eval_json(k: int, variants: list[str], home: str = "none") -> dict:
    """`home` is the in-distribution variant (the clean or the novel scene); the others succeed half as often."""
    per_variant = {v: {"n_episodes": EPISODES, "n_success": k if v == home else k // 2,
                       "pc_success": 100.0 * (k if v == home else k // 2) / EPISODES} for v in variants}
    return {"overall": {}, "per_variant": per_variant, "per_task": [], "episodes": []}


def _offset(method: str, seed: int) -> int:
    """Seed-to-seed variation: every method gains on odd seeds; CapVector also on seeds 0 and 3."""
    return seed % 2 + (method == "capvector" and seed % 3 == 0)


def _finish_fabricated(graph: DemoGraph, run_dir) -> None:
    """Write plausible outputs and valid markers for every stage, as a finished run would leave them."""
    runner = StageRunner(run_dir)
    for stage in graph.stages:
        fp = runner.fingerprint(stage)
        runner.fingerprints[stage.name] = fp
        d = graph.dir(stage.name)
        d.mkdir(parents=True, exist_ok=True)
        summary: dict = {}
        if stage.name.startswith("eval/"):
            variants = list(stage.params["perturbations"])
            if stage.name.startswith("eval/cap/"):
                k = {"pretrained": 0, "sft": 3, "aux": 5}[stage.name.rsplit("/", 1)[1]]
            elif stage.name.startswith("eval/down/") and stage.name.count("/") == 2:  # the starting points
                k = 0 if stage.name.endswith("pretrained") else 1
            elif stage.name == "eval/pretrain/pretrained":
                k = PRETRAIN_REFERENCE
            else:
                run = next(r for r in graph.runs if stage.name.startswith(f"eval/{r.stage}/"))
                if stage.name.endswith("/pretrain"):
                    k = PRETRAIN.get(run.method, 5) + _offset(run.method, run.seed)
                else:
                    budget = int(stage.name.rsplit("step", 1)[1]) if "/step" in stage.name else run.budgets[-1]
                    k = SUCCESS[run.method][run.budgets.index(budget)] + _offset(run.method, run.seed)
            home = graph.down_variant if stage.params["split"] == graph.cfg.split_spec("down") else "none"
            (d / "eval.json").write_text(json.dumps(_eval_json(k, variants, home)))
        elif stage.name.startswith("down/"):
            summary = {"samples_per_s": 400.0 if "/aux/" not in stage.name else 300.0,
                       "trainable_parameters": PARAMS.get(stage.name.split("/")[1], 1000)}
        elif stage.name.startswith("vector/"):
            summary = {"tensors": 12, "norm": 2.5 if "dcap" in stage.name else 1.5}
        files = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                 for p in d.iterdir() if p.is_file() and p.name != MARKER}
        (d / MARKER).write_text(json.dumps({"fingerprint": fp, "seconds": 1.0, "summary": summary, "files": files}))


def _fabricated_run(tmp_path, mode: str, **overrides) -> tuple:
    """A fabricated finished run with quick mode's small graph (every study), five seeds, judged as `mode`."""
    pre = save_policy(TinyVLA(PolicyConfig(embedder="hash", width=32, depth=1, heads=1)), tmp_path / "pre")
    cfg = PipelineConfig.for_mode(mode, **{**MODE_SETTINGS["quick"], "pretrained": str(pre), "seeds": SEEDS,
                                           **overrides})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
    _finish_fabricated(DemoGraph(cfg, run_dir), run_dir)
    return run_dir, cfg


@pytest.fixture(params=["default"])
def finished_run(tmp_path, request):
    return _fabricated_run(tmp_path, request.param)


def test_results_pool_seeds_and_judge_findings(finished_run):
    run_dir, cfg = finished_run
    res = regenerate_report(run_dir)
    assert res == json.loads((run_dir / "results.json").read_text())
    final = str(cfg.down_budgets[-1])
    cap = res["methods"]["capvector"]["budgets"][final]
    k = sum(SUCCESS["capvector"][-1] + _offset("capvector", s) for s in cfg.seeds)
    assert (cap["k"], cap["n"]) == (k, EPISODES * len(cfg.seeds))
    lo, hi = wilson_interval(k, cap["n"])
    assert math.isclose(cap["ci95"][0], 100 * lo) and math.isclose(cap["ci95"][1], 100 * hi)
    sft = res["methods"]["sft"]["budgets"][final]
    finding = next(f for f in res["findings"] if f["key"] == f"capvector_beats_sft@{final}")
    # The test is over seeds: per-seed differences 60, 50, 50, 60, 50 pp; mean 54, s² = 30, t(0.975, 4) = 2.776445
    # (printed tables), so 54 ± 2.776445·√(30/5).
    half = 2.776445 * math.sqrt(30 / 5)
    assert math.isclose(finding["diff_pp"], 54.0)
    assert math.isclose(finding["ci95_pp"][0], 54 - half, abs_tol=1e-4)
    assert math.isclose(finding["ci95_pp"][1], 54 + half, abs_tol=1e-4)
    assert finding["test"] == "paired t over seeds" and finding["seeds"] == list(SEEDS)
    d, dlo, dhi = newcombe_difference(cap["k"], cap["n"], sft["k"], sft["n"])  # the episode-level description
    assert math.isclose(finding["episode_diff_pp"], 100 * d) and math.isclose(finding["episode_ci95_pp"][0], 100 * dlo)
    assert finding["verdict"] == "shown"
    assert cap["by_seed"] == {str(s): 100.0 * (SUCCESS["capvector"][-1] + _offset("capvector", s)) / EPISODES
                              for s in SEEDS}
    # OOD: the fabricated perturbed runs succeed half as often; pooled over the one variant of quick mode.
    assert res["methods"]["sft"]["ood_pooled"]["k"] == sum((SUCCESS["sft"][-1] + s % 2) // 2 for s in cfg.seeds)
    assert math.isclose(res["cost_ratio_vs_sft"]["aux"], 400.0 / 300.0)
    assert res["extraction_s"] == {"sft": 1.0, "aux": 1.0, "extract": 1.0, "merge": 1.0}  # every marker says 1 s
    gse_full = next(f for f in res["findings"] if f["key"] == "gse_beats_full")
    gse, full = res["methods"]["tuner-gse"]["budgets"][final], res["methods"]["tuner-full"]["budgets"][final]
    assert math.isclose(gse_full["diff_pp"], 100 * (gse["k"] / gse["n"] - full["k"] / full["n"]))
    assert res["tuners"] == ["full", "lora", "gse"]
    # Step 0: θ_pre for the methods that start there, θ_meta for CapVector.
    assert res["methods"]["sft"]["start"]["k"] == 0 and res["methods"]["capvector"]["start"]["k"] == 1
    assert res["methods"]["tuner-lora"]["start"] is None


@pytest.mark.parametrize("finished_run", ["quick"], indirect=True)
def test_quick_mode_assesses_nothing(finished_run):
    run_dir, _ = finished_run
    res = regenerate_report(run_dir)
    assert {f["verdict"] for f in res["findings"]} == {"not assessed (quick mode)"}
    assert "cannot test any effect" in (run_dir / "report.md").read_text()


def test_report_has_tables_plots_and_config(finished_run):
    run_dir, _ = finished_run
    regenerate_report(run_dir)
    text = (run_dir / "report.md").read_text()
    for needle in ("## Findings against the papers", "CapVector: SFT from θ_meta + L_orth", "VLA-GSE", "λ_orth",
                   "| θ_aux |", '"mode": "default"', "one-time extraction", "= 4 s.", "| steps / run |",
                   "Per training seed (0, 1, 2, 3, 4)", "paired t over seeds",
                   "Test ranges (this run): training seeds [0, 1, 2, 3, 4], rollout base seed 5000",
                   "validation ranges (training seeds 100–199, rollout base seed 3000)"):
        assert needle in text, needle
    for name in PLOTS:
        assert (run_dir / name).stat().st_size > 1000, name
    assert (run_dir / "success_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_mode_runs_the_capvector_question_only(tmp_path):
    """The 45-minute default: SFT, aux-SFT and CapVector (+ L_orth) on every seed; the studies are `--extended`."""
    graph = DemoGraph(PipelineConfig.for_mode("default"), tmp_path / "graph")
    assert {r.method for r in graph.runs} == {"sft", "aux", "capvector"}
    extended = DemoGraph(PipelineConfig.for_mode("extended"), tmp_path / "ext")
    assert {"capvector_no_orth", "tuner-gse", "tuner-lora", "capvector@weight=0.5", "capvector@orth=1e-05",
            "capvector@tiny-vla-vlm"} <= {r.method for r in extended.runs}
    run_dir, _ = _fabricated_run(tmp_path, "default", weight_sweep=(), preset_sweep=(), orth_control=False,
                                 tuners=())
    res = regenerate_report(run_dir)
    assert not any(f["key"].startswith(("orth_keeps_gain", "gse_")) for f in res["findings"])
    assert res["tuners"] == [] and len(res["orth_sweep"]) == len(res["merge_choices"]) == 1
    text = (run_dir / "report.md").read_text()
    assert text.count("run `capvector demo --extended`") == 3 and "![tuners]" not in text
    assert not any((run_dir / name).exists() for name in ("tuners.png", "orth_sweep.png", "merge_choices.png"))


def test_the_long_orth_study_drops_aux_and_judges_l_orth_at_every_budget(tmp_path):
    """configs/orth_long.json's shape: no aux-SFT arm (nothing trains or judges it), L_orth against its control at
    each budget (Finding 2: where it starts to matter) and the main λ_orth against each swept one."""
    SUCCESS["capvector@orth=0.001"] = [3, 4]
    try:
        run_dir, cfg = _fabricated_run(tmp_path, "default", aux_arm=False, orth_control=True, orth_sweep=(1e-3,),
                                       weight_sweep=(), preset_sweep=(), tuners=())
        res = regenerate_report(run_dir)
    finally:
        del SUCCESS["capvector@orth=0.001"]
    assert "aux" not in res["methods"] and not any(s.name.startswith("down/aux/")
                                                   for s in DemoGraph(cfg, run_dir).stages)
    keys = {f["key"]: f for f in res["findings"]}
    assert not any(k.startswith(("down_aux", "capvector_matches_aux")) for k in keys)
    assert "cap_aux_beats_sft" in keys  # θ_aux on D_cap still makes the vector
    for i, b in enumerate(cfg.down_budgets):
        # per seed: CapVector's successes minus the control's (both gain on odd seeds; CapVector on seeds 0, 3 too)
        diffs = [10.0 * (SUCCESS["capvector"][i] - SUCCESS["capvector_no_orth"][i] + (s % 3 == 0)) for s in SEEDS]
        assert math.isclose(keys[f"orth_keeps_gain@{b}"]["diff_pp"], sum(diffs) / len(diffs))
    final = cfg.down_budgets[-1]
    assert "(the longest budget)" in keys[f"orth_keeps_gain@{final}"]["claim"]
    assert math.isclose(keys[f"orth_main_beats_0.001@{final}"]["diff_pp"], 10.0 * (7 - 4) + 10.0 * 2 / 5)
    assert [r["orth_weight"] for r in res["orth_sweep"]] == [0.0, 1e-4, 1e-3]
    assert "aux-SFT from θ_pre" not in (run_dir / "report.md").read_text()


def test_a_run_recorded_before_orth_control_keeps_its_control(tmp_path):
    run_dir, _ = _fabricated_run(tmp_path, "default")
    data = json.loads((run_dir / CONFIG_FILE).read_text())
    del data["orth_control"]
    (run_dir / CONFIG_FILE).write_text(json.dumps(data))
    assert "capvector_no_orth" in regenerate_report(run_dir)["methods"]


def test_unfinished_run_is_refused(finished_run):
    run_dir, _ = finished_run
    victim = next((run_dir / "stages" / "eval" / "cap").iterdir())
    (victim / "eval.json").write_text("{}")
    with pytest.raises(CapvectorError, match="not finished"):
        regenerate_report(run_dir)
    with pytest.raises(CapvectorError, match="not a demo run directory"):
        regenerate_report(run_dir / "stages")


@pytest.mark.parametrize("interval,claim,expected", [
    ((1.0, 9.0), "greater", "shown"), ((-9.0, -1.0), "greater", "contradicted"),
    ((-3.0, 5.0), "greater", "not shown (not significant)"),
    ((-3.0, 5.0), "at_least", "consistent (no significant difference)"),
])
def test_verdicts(interval, claim, expected):
    assert verdict({"ci95_pp": list(interval), "n_seeds": [5, 5]}, claim) == expected
    assert verdict({"ci95_pp": list(interval), "n_seeds": [3, 3]}, claim) == expected + " — only 3 seeds"
    assert verdict({"ci95_pp": list(interval), "n_seeds": [1, 1]}, claim) == "not assessed (one training seed)"


def test_config_modes_and_file_errors(tmp_path):
    quick = PipelineConfig.for_mode("quick")
    assert quick.seeds == (0,) and quick.down_steps == quick.down_budgets[-1]
    ext = PipelineConfig.for_mode("extended")
    assert ext.orth_sweep and ext.weight_sweep and ext.preset_sweep
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"mode": "quick", "seeds": [3, 4], "down_budgets": [10, 30]}))
    cfg = PipelineConfig.from_file(path)
    assert cfg.seeds == (3, 4) and cfg.down_budgets == (10, 30) and cfg.cap_steps == quick.cap_steps
    path.write_text(json.dumps({"sedes": [1]}))
    with pytest.raises(CapvectorError, match="unknown pipeline config keys \\['sedes'\\]"):
        PipelineConfig.from_file(path)
    with pytest.raises(CapvectorError, match="increasing"):
        PipelineConfig.for_mode("default", down_budgets=(50, 10))
    with pytest.raises(CapvectorError, match="tuners"):
        PipelineConfig.for_mode("default", tuners=("full", "ia3"))
    # reported runs cannot use the seeds that settings are chosen on
    with pytest.raises(CapvectorError, match=r"training seeds \[101\].*validation ranges"):
        PipelineConfig.for_mode("default", seeds=(0, 101))
    with pytest.raises(CapvectorError, match="rollout seed 3000 overlap the validation ranges"):
        PipelineConfig.for_mode("default", eval_seed=3000)
    # ... and a validation run (to choose a setting, or to check a test-range result) uses only those
    checked = PipelineConfig.for_mode("default", ranges="validation", seeds=(100, 109), eval_seed=3000)
    assert checked.ranges == "validation" and PipelineConfig.for_mode("default").ranges == "test"
    with pytest.raises(CapvectorError, match=r"validation run uses training seeds 100–199.*seeds \[0\]"):
        PipelineConfig.for_mode("default", ranges="validation", seeds=(0, 100), eval_seed=3000)
    with pytest.raises(CapvectorError, match="rollout seed 5000"):
        PipelineConfig.for_mode("default", ranges="validation", seeds=(100,))
    with pytest.raises(CapvectorError, match="ranges must be 'test' or 'validation'"):
        PipelineConfig.for_mode("default", ranges="train")
    # the D_cap runs' seed (cap_seed) is a training seed like the others
    with pytest.raises(CapvectorError, match=r"training seeds \[100\].*validation ranges"):
        PipelineConfig.for_mode("default", seeds=(5, 6), cap_seed=100)
    with pytest.raises(CapvectorError, match=r"validation run uses training seeds 100–199.*seeds \[0\]"):
        PipelineConfig.for_mode("default", ranges="validation", seeds=(100,), cap_seed=0, eval_seed=3000)


def test_training_speed_covers_the_whole_run_after_start_up():
    from capvector.pipeline.work import _speed

    history = [{"step": 25, "samples_per_s": 50.0},  # start-up interval: ignored
               {"step": 50, "samples_per_s": 400.0}, {"step": 100, "samples_per_s": 200.0}]
    # 25 steps at 400 samples/s and 50 at 200: the run's rate is 75 / (25/400 + 50/200) = 240 samples/s,
    # where a median over the two intervals would say 300 and a single stalled interval would decide alone.
    assert _speed(history)["samples_per_s"] == pytest.approx(240.0)
    assert _speed(history[:1]) == {}


def test_knowledge_preservation_against_theta_pre(tmp_path):
    """Per method: pretraining-task success and its change vs θ_pre, seed by seed, with a t interval over seeds."""
    run_dir, cfg = _fabricated_run(tmp_path, "default", forgetting=True)
    res = regenerate_report(run_dir)
    assert res["pretrain_reference"]["pc"] == 10.0 * PRETRAIN_REFERENCE
    sft = res["methods"]["sft"]["pretrain"]
    assert sft["by_seed"] == {str(s): 10.0 * (PRETRAIN["sft"] + s % 2) for s in SEEDS}
    # per-seed changes −40, −30, −40, −30, −40 pp: mean −36, s² = 30, so −36 ± t(0.975, 4)·√(30/5)
    half = 2.776445 * math.sqrt(30 / 5)
    assert math.isclose(sft["change"]["diff_pp"], -36.0) and sft["change"]["test"] == "paired t over seeds"
    assert math.isclose(sft["change"]["ci95_pp"][0], -36 - half, abs_tol=1e-4)
    assert math.isclose(sft["change"]["ci95_pp"][1], -36 + half, abs_tol=1e-4)
    assert res["methods"]["tuner-full"]["pretrain"]["by_seed"] == sft["by_seed"]  # full fine-tuning is the sft run
    findings = {f["key"]: f for f in res["findings"]}
    assert math.isclose(findings["lora_forgets_less_than_full"]["diff_pp"], 30.0)
    assert findings["lora_forgets_less_than_full"]["verdict"] == "shown"
    assert findings["gse_forgets_like_lora"]["verdict"] == "consistent (no significant difference)"
    assert "capvector_forgets_like_sft" in findings
    text = (run_dir / "report.md").read_text()
    assert "## Knowledge preservation" in text and "| θ_pre (no fine-tuning) | 0 | 80.0 [" in text
    assert f"| SFT from θ_pre | {cfg.down_steps} | 44.0 [" in text and "| -36.0 pp [" in text


def test_a_d_cap_scene_sweep_is_judged_against_the_main_vector(tmp_path):
    scene = "camera:0.5+colors:0.5"
    run_dir, cfg = _fabricated_run(tmp_path, "default", cap_scene_sweep=(scene,))
    res = regenerate_report(run_dir)
    findings = {f["key"]: f for f in res["findings"]}
    final = cfg.down_steps
    f = findings[f"dcap_{scene}_beats_main@{final}"]
    assert math.isclose(f["diff_pp"], 10.0 * (SUCCESS[f"capvector[dcap={scene}]"][-1] - SUCCESS["capvector"][-1])
                        - 10.0 * sum(s % 3 == 0 for s in SEEDS) / len(SEEDS))
    assert f"dcap_{scene}_beats_sft@{final}" in findings and f"dcap_{scene}_beats_main_ood" in findings
    assert [r["scene"] for r in res["dcap_scenes"]] == ["none", scene]
    assert [r["vector"]["norm"] for r in res["dcap_scenes"]] == [1.5, 2.5]
    text = (run_dir / "report.md").read_text()
    assert "## Vector quality: D_cap scenes" in text and f"| `{scene}` | 2.5 |" in text


def test_a_novel_environment_run_reads_its_own_scene(tmp_path):
    scene = "camera:0.5+colors:0.5@7"
    run_dir, cfg = _fabricated_run(tmp_path, "default", down_scene=scene, ood_perturbations=())
    res = regenerate_report(run_dir)
    cap = res["methods"]["capvector"]["budgets"][str(cfg.down_steps)]
    assert cap["k"] == sum(SUCCESS["capvector"][-1] + _offset("capvector", s) for s in SEEDS)  # the scene's episodes
    assert res["methods"]["capvector"]["start"]["k"] == 1
    assert not any("ood" in f["key"] for f in res["findings"])
    text = (run_dir / "report.md").read_text()
    assert f"fixed scene `{scene}`" in text and "No perturbation suite in this run" in text
    assert not (run_dir / "ood.png").exists()


def test_every_swept_method_has_a_readable_label(tmp_path):
    """The report and progress lines name each arm in words, not by its stage name."""
    cfg = PipelineConfig.for_mode("extended", combine_teachers=("latent-reasoning",),
                                  combine_methods=("sum", "ties:0.2"), cap_scene_sweep=("colors:0.5",),
                                  gse_sweep=({"init_type": "mgse", "top_k": 1},))
    labels = {r.method: method_label(r.method) for r in DemoGraph(cfg, tmp_path).runs}
    assert labels["capvector@orth=0.001"] == "CapVector, λ_orth = 0.001"
    assert labels["capvector@weight=1.5"] == "CapVector, λ = 1.5"
    assert labels["capvector@tiny-vla-vlm"] == "CapVector, selection tiny-vla-vlm"
    assert labels["capvector[dcap=colors:0.5]"] == "CapVector, τ from D_cap in colors:0.5"
    assert labels["capvector[latent-reasoning]"] == "CapVector from τ_latent-reasoning"
    assert labels["capvector[foundation+latent-reasoning|ties:0.2]"] == ("CapVector from τ_foundation + "
                                                                         "τ_latent-reasoning (ties:0.2)")
    assert labels["tuner-gse[init_type=mgse,top_k=1]"] == "VLA-GSE, init_type=mgse,top_k=1"
    assert not [m for m, label in labels.items() if label == m]


def test_gse_design_ablations_are_paired_with_the_gse_arm(tmp_path):
    """VLA-GSE's Table 3: each row against the GSE arm seed by seed; the init rows stand as the paper's claims."""
    rows = ({"init_type": "lora"}, {"init_type": "mgse"}, {"num_experts": 4})
    run_dir, cfg = _fabricated_run(tmp_path, "default", gse_sweep=rows)
    res = regenerate_report(run_dir)
    table = {r["method"]: r for r in res["gse_ablations"]}
    assert list(table) == ["tuner-gse", "tuner-gse[init_type=lora]", "tuner-gse[init_type=mgse]",
                           "tuner-gse[num_experts=4]"]
    assert res["tuners"] == ["full", "lora", "gse"]  # the rows are not tuners of the comparison above
    lora = table["tuner-gse[init_type=lora]"]
    # every seed: (3 + s%2) − (5 + s%2) successes of 10 in distribution → −20 pp; OOD halves (rounded down):
    # (3 + s%2)//2 − (5 + s%2)//2 = −1 of 10 → −10 pp; no seed-to-seed spread, so the interval is the point
    assert lora["vs_gse"]["diff_pp"] == pytest.approx(-20.0) and lora["vs_gse"]["ci95_pp"] == pytest.approx([-20] * 2)
    assert lora["vs_gse_ood"]["diff_pp"] == pytest.approx(-10.0) and lora["vs_gse"]["seeds"] == list(SEEDS)
    assert lora["success"]["k"] == sum(3 + s % 2 for s in SEEDS) and lora["options"] == {"init_type": "lora"}
    assert table["tuner-gse"]["vs_gse"] is None and table["tuner-gse"]["options"] == {"r": 16}
    assert [r["trainable_parameters"] for r in table.values()] == [1000, 1000, 1000, 952]
    findings = {f["key"]: f for f in res["findings"]}
    assert findings["gse_svd_init_beats_lora_init"]["diff_pp"] == pytest.approx(20.0)
    assert findings["gse_svd_init_beats_lora_init"]["verdict"] == "shown"
    assert findings["gse_svd_init_beats_mgse_init"]["verdict"] == "not shown (not significant)"
    assert not any("num_experts" in k for k in findings)  # descriptive rows: no verdict
    text = (run_dir / "report.md").read_text()
    assert "## VLA-GSE design ablations (Table 3)" in text and "equal trainable parameters but for the router" in text
    assert "| `tuner-gse[num_experts=4]` | num_experts=4 | 952 | -48 | 64.0 [" in text
    assert "| `tuner-gse[init_type=lora]` | init_type=lora | 1,000 | +0 | 34.0 [" in text
    assert "principal-component (SVD) init beats random LoRA-style init (no SVD) in distribution | +20.0 pp" in text
    assert "| -20.0 pp [-20.0, -20.0] | " in text and "| -10.0 pp [-10.0, -10.0] |" in text
    assert (run_dir / "gse_ablations.png").stat().st_size > 1000
    # a run without a perturbation suite: no OOD columns
    no_ood = [dict(r, ood_pooled=None, vs_gse_ood=None) for r in res["gse_ablations"]]
    lines = _gse_ablation_section({**res, "gse_ablations": no_ood})
    assert lines[4] == "| row | options | trainable params | Δ params | in distribution | Δ vs GSE |"
    assert lines[7] == "| `tuner-gse[init_type=lora]` | init_type=lora | 1,000 | +0 | " \
                       f"{rate_cell(lora['success'])} | -20.0 pp [-20.0, -20.0] |"
    plain, _ = _fabricated_run(tmp_path / "plain", "default")
    regenerate_report(plain)
    assert "design ablations" not in (plain / "report.md").read_text() and not (plain / "gse_ablations.png").exists()


def test_the_run_records_the_cpu_its_numerics_came_from(finished_run):
    """Two CPUs that dispatch to other kernels (AVX2, AVX512) train the same stage to other bits, so a run and its
    report name the CPU model and kernel set; a results.json from before they were recorded still renders."""
    import torch

    run_dir, _ = finished_run
    res = regenerate_report(run_dir)
    assert res["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        assert res["machine"]["cpu"] == (models[0] if models else None)
    header = (run_dir / "report.md").read_text().splitlines()[2]
    assert f"{res['machine']['cpu_capability']} kernels" in header or not res["machine"]["cpu"]
    old = {**res, "machine": {k: v for k, v in res["machine"].items() if k not in ("cpu", "cpu_capability")}}
    assert render_markdown(old, []).splitlines()[2].split(" · ")[1].startswith(f"{res['machine']['processor']}, ")


def _record_kernel(markers: list[Path], kernel: str) -> None:
    """Set the kernel set the training stages behind these markers record, as a run on that CPU would."""
    for marker in markers:
        record = json.loads(marker.read_text())
        record["summary"]["cpu_capability"] = kernel
        marker.write_text(json.dumps(record))


def test_a_run_whose_training_stages_ran_on_two_kernel_sets_says_so(finished_run):
    """The stage cache is keyed by the recipe, not the CPU: stages trained elsewhere are reused as they are, and the
    report must then say the run mixes machines."""
    run_dir, _ = finished_run
    markers = sorted(p for p in (run_dir / "stages" / "down").rglob(MARKER))
    _record_kernel(markers, "AVX2")
    res = regenerate_report(run_dir)
    assert res["training_kernels"] == {"AVX2": len(markers), "unrecorded": 2}  # θ_sft and θ_aux record none here
    assert "Mixed machines" not in (run_dir / "report.md").read_text()  # unrecorded: not evidence of a second CPU
    _record_kernel(markers[:3], "AVX512")
    _record_kernel(sorted((run_dir / "stages" / "cap").rglob(MARKER)), "AVX2")
    res = regenerate_report(run_dir)
    assert res["training_kernels"] == {"AVX2": len(markers) - 3 + 2, "AVX512": 3}
    assert "Mixed machines" in (run_dir / "report.md").read_text()
    assert "(AVX2: " + str(len(markers) - 1) + ", AVX512: 3 stages)" in (run_dir / "report.md").read_text()
    _record_kernel(markers[:3], "AVX2")
    assert "Mixed machines" not in render_markdown(regenerate_report(run_dir), [])


def test_a_validation_run_says_its_findings_are_not_reported_results(tmp_path):
    run_dir, _ = _fabricated_run(tmp_path, "default", ranges="validation", seeds=(100, 101, 102, 103, 104),
                                 eval_seed=3000)
    text = regenerate_report(run_dir) and (run_dir / "report.md").read_text()
    assert "**Validation ranges (this run)**: training seeds [100, 101, 102, 103, 104], rollout base seed 3000" in text
    assert "Test ranges (this run)" not in text and "not reported results" in text
