"""The studies' recipe: the novel environment (down_scene), D_cap scenes (cap_scene, cap_scene_sweep) and
forgetting; what each stage sees, and that runs without them keep every stage fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline import PipelineConfig
from capvector.pipeline.recipe import DemoGraph, dcap_method
from testing_common import stage_fingerprints as _fingerprints

NOVEL = "camera:0.5+colors:0.5+distractors:0.5@7"
DIVERSE = "camera:0.3+lighting:0.5+colors:0.5+distractors:0.5"

# Digests of every stage fingerprint of the shipped modes, recorded before scenes, D_cap sweeps and forgetting
# existed (commit 9b19b3d, whose fingerprints matched all 156 stage markers of the finished 5-seed test run).
# A change here invalidates every cached run: make it only on purpose, and say so in docs/demo.md.
RECORDED = {"quick": ("3268f9cd6733ec22", 41), "default": ("9bde38eafa54e348", 72),
            "extended": ("1aef9cd72dc0dd0d", 252)}


def _upstream(graph: DemoGraph, name: str) -> set[str]:
    deps = {s.name: s.deps for s in graph.stages}
    seen, todo = set(), [name]
    while todo:
        for d in deps[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


@pytest.mark.parametrize("mode", sorted(RECORDED))
def test_runs_without_the_studies_keep_their_fingerprints(tmp_path, mode):
    fps = _fingerprints(DemoGraph(PipelineConfig.for_mode(mode), tmp_path))
    digest = hashlib.sha256(json.dumps(fps, sort_keys=True).encode()).hexdigest()[:16]
    assert (digest, len(fps)) == RECORDED[mode]
    explicit = PipelineConfig.for_mode(mode, down_scene="none", cap_scene=None, forgetting=False, cap_scene_sweep=(),
                                       gse_sweep=())
    assert _fingerprints(DemoGraph(explicit, tmp_path)) == fps


def test_the_novel_environment_holds_d_down_and_its_rollouts_only(tmp_path):
    cfg = PipelineConfig.for_mode("quick", down_scene="distractors:0.5+colors:0.5+camera:0.5@7", ood_perturbations=())
    assert cfg.down_scene == NOVEL  # canonical, as the stages are fingerprinted
    g = DemoGraph(cfg, tmp_path)
    stages = {s.name: s for s in g.stages}
    assert stages["data/down"].params["scene"] == NOVEL and "scene" not in stages["data/cap"].params
    evals = [s for s in g.stages if s.params["kind"] == "eval"]
    down = [s for s in evals if s.params["split"] == "down"]
    assert {s.name for s in down} == set(g.evals.values()) | set(g.init_evals.values())
    assert all(s.params["perturbations"] == (NOVEL,) for s in down) and g.down_variant == NOVEL
    assert all(s.params["perturbations"] == ("none",) for s in evals if s.params["split"] != "down")
    for name in ("cap/sft", "cap/aux", "vector/tiny-vla-vlm_plus_expert", "meta/main"):
        assert "data/down" not in _upstream(g, name)  # θ_sft, θ_aux and the vector never see the novel scene
    assert not g.ood_evals


@pytest.mark.parametrize(("overrides", "message"), [
    ({"down_scene": "camera:0.5+colors:0.5", "ood_perturbations": ()}, "must be a fixed scene"),
    ({"down_scene": NOVEL}, "set ood_perturbations to \\[\\]"),
    ({"down_scene": "camera@seven", "ood_perturbations": ()}, "integer seed after '@'"),
    ({"cap_scene_sweep": (DIVERSE, DIVERSE)}, "must be distinct scenes"),
    ({"cap_scene": DIVERSE, "cap_scene_sweep": (DIVERSE,)}, "other than the main D_cap's"),
    ({"cap_scene_sweep": ("none",)}, "other than the main D_cap's \\(none\\)"),
    ({"cap_scene": 3}, "cap_scene must be a scene spec string"),
    ({"forgetting": True, "forgetting_episodes": 0}, "forgetting_episodes must be positive"),
])
def test_bad_study_settings_are_refused(overrides, message):
    with pytest.raises(CapvectorError, match=message):
        PipelineConfig.for_mode("quick", **overrides)


def test_the_main_d_cap_scene_reaches_its_collection_and_rollouts_only(tmp_path):
    g = DemoGraph(PipelineConfig.for_mode("quick", cap_scene=DIVERSE), tmp_path)
    stages = {s.name: s for s in g.stages}
    assert stages["data/cap"].params["scene"] == DIVERSE and "scene" not in stages["data/down"].params
    assert all(stages[f"eval/cap/{who}"].params["perturbations"] == (DIVERSE,) for who in ("pretrained", "sft", "aux"))
    assert all(s.params["perturbations"] == ("none",) for s in g.stages if s.name in g.evals.values())


def test_a_d_cap_scene_sweep_extracts_a_second_vector_from_the_same_recipe(tmp_path):
    cfg = PipelineConfig.for_mode("quick", cap_scene_sweep=(DIVERSE,))
    g = DemoGraph(cfg, tmp_path)
    stages = {s.name: s for s in g.stages}
    suffix = "@camera-0.3_plus_lighting-0.5_plus_colors-0.5_plus_distractors-0.5"
    data, sft, aux = (stages[f"{kind}{suffix}"] for kind in ("data/cap", "cap/sft", "cap/aux"))
    assert data.params == {**stages["data/cap"].params, "scene": DIVERSE}  # same tasks, layouts and seed
    assert sft.params == stages["cap/sft"].params and aux.params == stages["cap/aux"].params
    assert sft.deps == ("pretrained", f"data/cap{suffix}") and aux.deps == sft.deps
    vector = stages[f"vector/dcap{suffix}"]
    assert vector.deps == ("pretrained", f"cap/sft{suffix}", f"cap/aux{suffix}")
    assert vector.params == stages["vector/tiny-vla-vlm_plus_expert"].params
    assert stages[f"meta/dcap{suffix}"].deps == ("pretrained", f"vector/dcap{suffix}")
    method = dcap_method(DIVERSE)
    runs = [r for r in g.runs if r.method == method]
    assert [r.seed for r in runs] == list(cfg.seeds) and runs[0].budgets == cfg.down_budgets
    assert stages[runs[0].stage].deps == (f"meta/dcap{suffix}", "data/down", f"vector/dcap{suffix}")
    assert stages[runs[0].stage].params == stages[f"down/capvector/seed{cfg.seeds[0]}"].params  # same fine-tune
    assert (method, cfg.seeds[0]) in g.ood_evals and g.init_of[method] == f"meta/dcap{suffix}"


def test_forgetting_rolls_out_every_fine_tune_on_the_pretraining_tasks(tmp_path):
    cfg = PipelineConfig.for_mode("quick", forgetting=True, forgetting_episodes=2)
    assert cfg.tuner_steps == cfg.down_steps  # so full fine-tuning is the sft run
    g = DemoGraph(cfg, tmp_path)
    stages = {s.name: s for s in g.stages}
    assert {(r.method, r.seed) for r in g.runs} == set(g.forgetting_evals)
    for run in g.runs:
        s = stages[g.forgetting_evals[(run.method, run.seed)]]
        assert s.deps == (run.stage,) and s.run.policy == str(g.dir(run.stage))  # the final budget's weights
        assert (s.params["split"], s.params["episodes"], s.params["perturbations"]) == ("pretrain", 2, ("none",))
    assert g.forgetting_evals[("tuner-full", 0)] == g.forgetting_evals[("sft", 0)]
    ref = stages[g.forgetting_reference]
    assert ref.deps == ("pretrained",) and ref.params == s.params
    plain = DemoGraph(PipelineConfig.for_mode("quick"), tmp_path / "plain")
    assert not plain.forgetting_evals and not any("pretrain" in s.params.get("split", "") for s in plain.stages)


def test_collection_records_its_scene(tmp_path):
    from capvector.pipeline.work import DATASET, Collect

    summary = Collect("reach-v3", 1, 0, 0.0, 32, scene="camera:0.5@3")(tmp_path)
    manifest = json.loads((tmp_path / DATASET / "manifest.json").read_text())
    assert summary["episodes"] == 1 and manifest["settings"]["perturbation"] == "camera:0.5@3"


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_study_configs_use_the_test_ranges_and_reuse_the_versatility_cell(tmp_path):
    """Each study adds to configs/versatility/vla-spatial.json: a copy of that run's directory serves every stage
    the study shares with it from the cache (same fingerprints); the novel environment shares the D_cap side."""
    cell = _fingerprints(DemoGraph(PipelineConfig.from_file(CONFIGS / "versatility" / "vla-spatial.json"), tmp_path))
    cap_side = {"pretrained", "data/cap", "cap/sft", "cap/aux", "eval/cap/pretrained", "eval/cap/sft", "eval/cap/aux",
                "vector/tiny-vla-vlm_plus_expert", "meta/main"}
    shared = {"novel_env": cap_side, "novel_embodiment": cap_side, "dcap_diversity": set(cell),
              "forgetting": {n for n in cell if not n.endswith("/ood")}}
    for name, expected in shared.items():
        cfg = PipelineConfig.from_file(CONFIGS / f"{name}.json")
        assert cfg.seeds == (0, 1, 2, 3, 4) and cfg.eval_seed == 5000 and cfg.down_budgets == (150,)
        fps = _fingerprints(DemoGraph(cfg, tmp_path))
        assert {n for n in cell if fps.get(n) == cell[n]} == expected, name
    assert PipelineConfig.from_file(CONFIGS / "novel_env.json").down_scene.endswith("@1")
    embodiment = PipelineConfig.from_file(CONFIGS / "novel_embodiment.json")
    assert all(t.startswith("rs-") for t in embodiment.tasks("down")) and embodiment.split_spec("down") == \
        ",".join(embodiment.tasks("down"))
    assert PipelineConfig.from_file(CONFIGS / "dcap_diversity.json").cap_scene_sweep
    forgetting = PipelineConfig.from_file(CONFIGS / "forgetting.json")
    assert forgetting.forgetting and forgetting.tuners == ("full", "lora", "gse") and forgetting.tuner_steps == 150


def test_the_lambda_orth_test_stage_reuses_orth_longs_vector_on_new_seeds(tmp_path):
    """configs/orth_weight_1e-3.json tests a setting seen on orth_long's seeds: other training seeds, the same
    vector (cap_seed 0) and everything upstream of the downstream fine-tunes from a copy of that run."""
    long = PipelineConfig.from_file(CONFIGS / "orth_long.json")
    test = PipelineConfig.from_file(CONFIGS / "orth_weight_1e-3.json")
    assert not set(test.seeds) & set(long.seeds) and test.cap_seed == long.seeds[0] and test.orth_weight == 1e-3
    before = _fingerprints(DemoGraph(long, tmp_path))
    after = _fingerprints(DemoGraph(test, tmp_path))
    upstream = {"pretrained", "data/cap", "data/down", "cap/sft", "cap/aux", "eval/cap/pretrained", "eval/cap/sft",
                "eval/cap/aux", "vector/tiny-vla-vlm_plus_expert", "meta/main", "eval/down/pretrained",
                "eval/down/meta"}
    assert {n for n in after if before.get(n) == after[n]} == upstream
