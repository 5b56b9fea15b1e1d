"""The vector-combination study in the recipe: its stages and their wiring, and the two-vector merge stage
against the sum computed by hand."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from capvector.errors import CapvectorError
from capvector.pipeline import PipelineConfig
from capvector.pipeline.recipe import DemoGraph, combination_method
from capvector.pipeline.work import Merge, Train
from capvector.policy import TinyVLA, save_policy
from testing_common import small_config


def test_the_combination_adds_one_objective_and_two_capvector_starts(tmp_path):
    cfg = PipelineConfig.for_mode("quick", teacher="foundation", combine_teachers=("latent-reasoning",))
    g = DemoGraph(cfg, tmp_path)
    stages = {s.name: s for s in g.stages}
    aux = stages["cap/aux-latent-reasoning"]
    assert isinstance(aux.run, Train) and aux.run.train.config.teacher == "latent-reasoning"
    assert aux.run.train.config.seed == stages["cap/aux"].run.train.config.seed  # same run but the objective
    both = stages["meta/foundation+latent-reasoning"]
    assert isinstance(both.run, Merge) and both.run.weights == (cfg.vector_weight,) * 2
    assert set(both.deps) == {"pretrained", "vector/tiny-vla-vlm_plus_expert", "vector/latent-reasoning"}
    assert stages["vector/latent-reasoning"].deps == ("pretrained", "cap/sft", "cap/aux-latent-reasoning")
    for method, orth in ((combination_method("latent-reasoning"), "vector/latent-reasoning"),
                         (combination_method("foundation", "latent-reasoning"), "vector/foundation+latent-reasoning")):
        runs = [r for r in g.runs if r.method == method]
        assert [r.seed for r in runs] == list(cfg.seeds) and runs[0].budgets == cfg.down_budgets
        assert orth in stages[runs[0].stage].deps
    # one vector keeps the fingerprint of runs recorded before combinations existed
    assert stages["meta/main"].params == {"kind": "merge", "weight": cfg.vector_weight}
    with pytest.raises(CapvectorError, match="must be distinct and differ from the main teacher"):
        PipelineConfig(teacher="foundation", combine_teachers=("foundation",))


def test_each_combine_method_is_one_more_arm_with_its_merge_options(tmp_path):
    cfg = PipelineConfig.for_mode("quick", teacher="foundation", combine_teachers=("subgoal",),
                                  combine_methods=("sum", "ties:0.2"))
    g = DemoGraph(cfg, tmp_path)
    stages = {s.name: s for s in g.stages}
    ties = stages["meta/foundation+subgoal|ties:0.2"]
    assert (ties.run.combine, ties.run.density) == ("ties", 0.2) and ties.params["combine"] == "ties"
    assert "combine" not in stages["meta/foundation+subgoal"].params  # the sum keeps its fingerprint
    methods = {r.method for r in g.runs}
    assert {"capvector[subgoal]", "capvector[foundation+subgoal]", "capvector[foundation+subgoal|ties:0.2]"} <= methods
    for bad, why in (("ties", "density"), ("ties:x", "is not a number"), ("mean:0.5", "is not one of")):
        with pytest.raises(CapvectorError, match=f"combine method '{bad}'.*{why}"):
            PipelineConfig(combine_methods=(bad,))


def test_the_two_vector_merge_is_the_weighted_sum(tmp_path):
    import capvector

    torch.manual_seed(0)
    pre = save_policy(TinyVLA(small_config()), tmp_path / "pre")
    theta = load_file(str(pre / "model.safetensors"))
    vectors, moved = [], []
    for i in range(2):
        model = TinyVLA(small_config())
        model.load_state_dict({n: t + 0.01 * torch.randn_like(t) for n, t in theta.items()})
        aux = save_policy(model, tmp_path / f"aux{i}")
        moved.append(load_file(str(aux / "model.safetensors")))
        capvector.extract(pre, aux, tmp_path / f"vec{i}", pretrained=pre, progress=False)
        vectors.append(str(tmp_path / f"vec{i}"))
    out = tmp_path / "merged"
    out.mkdir()
    Merge(str(pre), tuple(vectors), (0.5, 2.0))(out)
    merged = load_file(str(out / "policy" / "model.safetensors"))
    for n, t in theta.items():
        want = t + 0.5 * (moved[0][n] - t) + 2.0 * (moved[1][n] - t)
        assert torch.allclose(merged[n], want, atol=1e-6), n


def test_runs_that_differ_only_in_the_objective_share_their_sft_stages(tmp_path):
    from capvector.pipeline.stages import StageRunner

    def fingerprints(teacher: str) -> dict[str, str]:
        g, runner = DemoGraph(PipelineConfig.for_mode("quick", teacher=teacher), tmp_path), StageRunner(tmp_path)
        for s in g.stages:
            runner.fingerprints[s.name] = runner.fingerprint(s)
        return runner.fingerprints

    spatial, latent = fingerprints("foundation"), fingerprints("latent-reasoning")
    shared = {name for name in spatial if spatial[name] == latent.get(name)}
    assert {"cap/sft", "down/sft/seed0", "eval/down/sft/seed0/step40", "down/tuner-lora/seed0"} <= shared
    assert not {"cap/aux", "down/aux/seed0", "meta/main", "down/capvector/seed0"} & shared
