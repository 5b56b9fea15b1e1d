"""VLA-GSE's design ablations (gse_sweep): rows validated when the config is built, one GSE arm per row and seed
with the row's options on top of the GSE arm's, and the shipped study reusing the cached runs it shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline import PipelineConfig
from capvector.pipeline.recipe import DemoGraph, gse_ablation_method
from testing_common import stage_fingerprints as _fingerprints

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tuners": ("full", "lora"), "gse_sweep": ({"top_k": 1},)},
     r"gse_sweep ablates the GSE arm, but tuners \['full', 'lora'\] has no 'gse'"),
    ({"gse_sweep": ({},)}, r"gse_sweep row 0 \(\{\}\): expected a non-empty object"),
    ({"gse_sweep": ("mgse",)}, r"gse_sweep row 0 \('mgse'\): expected a non-empty object"),
    ({"gse_sweep": ({"top_k": 1}, {"r": 8})}, r"gse_sweep row 1 \(\{'r': 8\}\): cannot ablate \['r'\]"),
    ({"gse_sweep": ({"init": "mgse"},)}, r"row 0 .*cannot ablate \['init'\]"),
    ({"gse_sweep": ({"target_modules": ["q"]},)}, r"cannot ablate \['target_modules'\]"),
    ({"gse_sweep": ({"init_type": "pissa"},)}, r"row 0 .*GSEConfig\.init_type: expected one of"),
    ({"gse_sweep": ({"num_experts": 32},)}, r"row 0 .*GSEConfig\.r: expected ≥ num_experts=32"),
    ({"gse_sweep": ({"top_k": 8},)}, r"GSEConfig\.top_k: expected an integer in \[1, .*= 7\]"),
    ({"gse_sweep": ({"num_experts": 4, "top_k": 4},)}, r"GSEConfig\.top_k: expected an integer in \[1, .*= 3\]"),
    ({"gse_sweep": ({"dropout": "x"},)}, r"row 0 .*could not convert string to float"),
    ({"gse_sweep": ({"top_k": 1}, {"top_k": 1})}, r"row 1 .*repeats row 0"),
    ({"gse_sweep": ({"init_type": "svd"},)}, r"row 0 .*trains the same adapter as the GSE arm"),
    ({"gse_options": {"top_k": 1}, "gse_sweep": ({"top_k": 1},)}, r"trains the same adapter as the GSE arm"),
    ({"gse_sweep": ({"dropout": 0.1}, {"dropout": 0.1000001})}, r"row 1 .*repeats row 0 .*name 'dropout=0.1'"),
    ({"gse_sweep": ({"top_k": 2},)}, r"trains the same adapter as the GSE arm"),  # the default
    ({"gse_sweep": ({"top_k": 1}, {"top_k": 1, "eta": 1.0})}, r"row 1 .*repeats row 0"),
])
def test_bad_sweep_rows_are_refused_naming_the_row(overrides, message):
    with pytest.raises(CapvectorError, match=message) as info:
        PipelineConfig.for_mode("quick", **overrides)
    assert "\n" not in str(info.value)


def test_rows_are_checked_with_their_own_experts():
    """top_k's bound is the row's E − G: 7 routed experts of the default 8, 3 of 4."""
    cfg = PipelineConfig.for_mode("quick", gse_sweep=({"top_k": 7}, {"num_experts": 4, "top_k": 3}))
    assert cfg.gse_sweep == ({"top_k": 7}, {"num_experts": 4, "top_k": 3})


def test_each_row_is_the_gse_arm_with_its_options_on_top(tmp_path):
    base = {"dropout_mask": "per_expert"}
    rows = ({"init_type": "mgse"}, {"num_experts": 4, "dropout_mask": "shared"}, {"aux_loss_weight": 0.0})
    cfg = PipelineConfig.for_mode("quick", seeds=(0, 1), forgetting=True, gse_options=base, gse_sweep=rows)
    g = DemoGraph(cfg, tmp_path)
    stages = {s.name: s for s in g.stages}
    names = ["tuner-gse[init_type=mgse]", "tuner-gse[num_experts=4,dropout_mask=shared]",
             "tuner-gse[aux_loss_weight=0]"]
    assert [gse_ablation_method(r) for r in rows] == names
    # what GSEConfig receives, written out by hand: r, then the GSE arm's options, then the row's
    expected = [{"r": 16, "dropout_mask": "per_expert", "init_type": "mgse"},
                {"r": 16, "dropout_mask": "shared", "num_experts": 4},
                {"r": 16, "dropout_mask": "per_expert", "aux_loss_weight": 0.0}]
    for name, options in zip(names, expected, strict=True):
        runs = [r for r in g.runs if r.method == name]
        assert [r.seed for r in runs] == [0, 1] and all(r.budgets == (cfg.tuner_steps,) for r in runs)
        for run in runs:
            arm = stages[f"down/tuner-gse/seed{run.seed}"]
            train = stages[run.stage]
            assert train.params["train"]["gse_options"] == options
            # everything else as the GSE arm's: init, data, steps, seed, lr
            assert {**train.params["train"], "gse_options": None} == {**arm.params["train"], "gse_options": None}
            assert train.deps == arm.deps == ("pretrained", "data/down")
            assert (name, run.seed) in g.ood_evals and (name, run.seed) in g.forgetting_evals
            assert stages[g.evals[(name, run.seed, cfg.tuner_steps)]].deps == (run.stage,)
    assert stages["down/tuner-gse/seed0"].params["train"]["gse_options"] == {"r": 16, "dropout_mask": "per_expert"}


def test_a_sweep_adds_stages_and_changes_none(tmp_path):
    plain = _fingerprints(DemoGraph(PipelineConfig.for_mode("quick"), tmp_path))
    swept = _fingerprints(DemoGraph(PipelineConfig.for_mode("quick", gse_sweep=({"top_k": 1},)), tmp_path))
    assert {n: fp for n, fp in swept.items() if n in plain} == plain
    row = "tuner-gse[top_k=1]/seed0"
    assert sorted(set(swept) - set(plain)) == [f"down/{row}", f"eval/down/{row}/ood", f"eval/down/{row}/step40"]


def test_the_shipped_ablation_config_reuses_the_forgetting_run_and_its_rows_are_valid(tmp_path):
    """configs/gse_ablation.json is configs/forgetting.json plus the camera perturbation and the rows, without the
    pretraining-task rollouts (the rows are about adaptation): every other stage of a finished forgetting run is
    served from the cache."""
    raw = json.loads((CONFIGS / "gse_ablation.json").read_text())
    cfg = PipelineConfig.from_file(CONFIGS / "gse_ablation.json")
    assert cfg.gse_r == 16 and cfg.gse_options == {} and cfg.tuners == ("full", "lora", "gse")
    assert (cfg.seeds, cfg.eval_seed, cfg.down_budgets, cfg.tuner_steps) == ((0, 1, 2, 3, 4), 5000, (150,), 150)
    assert cfg.ood_perturbations == ("camera:0.5",) and not cfg.forgetting
    assert (cfg.threads, cfg.workers, cfg.teacher, cfg.policy) == (1, 1, "foundation", "tiny-vla")
    assert [gse_ablation_method(r) for r in cfg.gse_sweep] == [
        "tuner-gse[init_type=mgse]", "tuner-gse[init_type=lora]", "tuner-gse[dropout_mask=per_expert]",
        "tuner-gse[num_experts=4]", "tuner-gse[num_generalized_experts=2]", "tuner-gse[top_k=1]",
        "tuner-gse[aux_loss_weight=0]", "tuner-gse[aux_loss_weight=0.001]"]
    ablation = _fingerprints(DemoGraph(cfg, tmp_path))
    for shared in ("forgetting.json", "versatility/vla-spatial.json"):
        fps = _fingerprints(DemoGraph(PipelineConfig.from_file(CONFIGS / shared), tmp_path))
        assert {n: ablation[n] for n in fps if n in ablation} == {n: fp for n, fp in fps.items()
                                                              if "pretrain" not in n.split("/")}, shared
    del raw["gse_sweep"]
    without = _fingerprints(DemoGraph(PipelineConfig.for_mode(raw.pop("mode"), **raw), tmp_path))
    assert {n: ablation[n] for n in without} == without
    rows = {n for n in ablation if "tuner-gse[" in n}
    assert set(ablation) - set(without) == rows and len(rows) == 8 * 5 * 3  # train, in-dist, OOD
