"""Pipeline training stages carry a typed TrainConfig, built with the recipe: a wrong setting fails before any
stage runs, and the stage fingerprint is the recipe's chosen fields (so cached runs stay valid)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline.config import PipelineConfig
from capvector.pipeline.recipe import DemoGraph
from capvector.pipeline.work import Train, TrainSettings
from capvector.train import TrainConfig


def test_a_misspelt_training_field_fails_when_the_settings_are_built():
    with pytest.raises(CapvectorError, match=r"unknown train config keys \['stpes'\]"):
        TrainSettings.of(stpes=10, lr=1e-3)


def test_a_bad_training_setting_fails_when_the_recipe_is_built(tmp_path):
    cfg = replace(PipelineConfig.for_mode("quick"), cap_lr=-1.0)
    with pytest.raises(CapvectorError, match="lr must be positive, found -1.0"):
        DemoGraph(cfg, tmp_path)


def test_training_stages_carry_a_config_and_fingerprint_the_chosen_fields(tmp_path):
    graph = DemoGraph(PipelineConfig.for_mode("quick"), tmp_path)
    trains = [s for s in graph.stages if isinstance(s.run, Train)]
    assert trains
    for stage in trains:
        settings = stage.run.train
        assert isinstance(settings.config, TrainConfig)
        chosen = stage.params["train"]
        assert {"steps", "batch_size", "lr", "seed"} <= set(chosen)
        assert all(chosen[k] == getattr(settings.config, k) for k in chosen)


def test_gse_options_reach_the_gse_arm_and_bad_ones_fail_at_config_time(tmp_path):
    plain = DemoGraph(PipelineConfig.for_mode("quick"), tmp_path)
    options = {"init_type": "mgse", "dropout_mask": "per_expert"}
    ablated = DemoGraph(PipelineConfig.for_mode("quick", gse_options=options), tmp_path)

    def gse_options(graph: DemoGraph) -> dict:
        stage = next(s for s in graph.stages if s.name.startswith("down/tuner-gse/"))
        return stage.params["train"]["gse_options"]

    assert gse_options(plain) == {"r": 16}  # unchanged without options, so cached GSE stages stay valid
    assert gse_options(ablated) == {"r": 16, "init_type": "mgse", "dropout_mask": "per_expert"}
    with pytest.raises(CapvectorError, match=r"gse_options has unknown GSEConfig fields \['init'\]"):
        PipelineConfig.for_mode("quick", gse_options={"init": "mgse"})
    with pytest.raises(CapvectorError, match=r"GSEConfig\.init_type: expected one of"):
        PipelineConfig.for_mode("quick", gse_options={"init_type": "pissa"})


def test_cap_seed_keeps_an_earlier_runs_vector_for_new_downstream_seeds(tmp_path):
    from testing_common import stage_fingerprints

    first = stage_fingerprints(DemoGraph(PipelineConfig.for_mode("quick", seeds=(0,)), tmp_path))
    same_vector = stage_fingerprints(DemoGraph(PipelineConfig.for_mode("quick", seeds=(5,), cap_seed=0), tmp_path))
    new_vector = stage_fingerprints(DemoGraph(PipelineConfig.for_mode("quick", seeds=(5,)), tmp_path))
    shared = ["cap/sft", "cap/aux", "vector/tiny-vla-vlm_plus_expert", "meta/main", "eval/down/meta"]
    assert all(first[s] == same_vector[s] != new_vector[s] for s in shared)
    assert first["down/capvector/seed0"] != same_vector["down/capvector/seed5"]


def test_jobs_option_overrides_the_config_and_a_bad_value_fails_before_any_stage(tmp_path, monkeypatch):
    from testing_common import run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text('{"mode": "quick", "jobs": 2}')
    assert PipelineConfig.from_file(tmp_path / "c.json").jobs == 2
    bad = run_cli("pipeline", "--config", "c.json", "--run-dir", "run", "--jobs", "0")
    assert bad.code == 2 and "jobs must be positive, found 0" in bad.stderr
    assert not (tmp_path / "run").exists()
