"""Task splits as configuration: named splits by default (stage fingerprints unchanged), explicit task lists
validated against the simulator's tasks and the scripted experts' measured success, held-out downstream tasks."""

from __future__ import annotations

import json

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline import PipelineConfig
from capvector.pipeline.recipe import DemoGraph
from capvector.sim.tasks import EXPERT_SUCCESS, SPLITS, demo_ready


def test_default_splits_keep_their_names(tmp_path):
    cfg = PipelineConfig.for_mode("quick")
    assert cfg.tasks("down") == SPLITS["down"] and cfg.split_spec("down") == "down"
    graph = DemoGraph(cfg, tmp_path)
    collect = next(s for s in graph.stages if s.name == "data/down")
    assert collect.params["split"] == "down"


def test_task_lists_reach_collection_and_rollouts(tmp_path):
    down = ("sweep-v3", "plate-slide-back-v3")
    cfg = PipelineConfig.for_mode("quick", down_tasks=list(down))
    assert cfg.down_tasks == down and cfg.split_spec("down") == "sweep-v3,plate-slide-back-v3"
    graph = DemoGraph(cfg, tmp_path)
    specs = {s.params["split"] for s in graph.stages if s.params.get("kind") in ("collect", "eval")}
    assert "sweep-v3,plate-slide-back-v3" in specs and "down" not in specs
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"mode": "quick", "cap_tasks": ["drawer-close-v3", "dial-turn-v3"]}))
    assert PipelineConfig.from_file(path).tasks("cap") == ("drawer-close-v3", "dial-turn-v3")


@pytest.mark.parametrize("overrides,message", [
    ({"down_tasks": ["pick-place-v3"]}, r"pretrain_tasks and down_tasks overlap in \['pick-place-v3'\]"),
    ({"cap_tasks": ["door-close-v3"]}, "cap_tasks and down_tasks overlap"),
    ({"down_tasks": ["push-v4"]}, "unknown task"),
    ({"down_tasks": []}, "non-empty"),
    ({"down_tasks": ["sweep-v3", "sweep-v3"]}, "without repeats"),
])
def test_bad_task_lists_are_refused(overrides, message):
    with pytest.raises(CapvectorError, match=message):
        PipelineConfig.for_mode("quick", **overrides)


def test_unreliable_experts_cannot_supply_demos():
    weak = min(EXPERT_SUCCESS, key=lambda t: EXPERT_SUCCESS[t])
    assert EXPERT_SUCCESS[weak] < 90
    with pytest.raises(CapvectorError, match=f"{weak}.*{EXPERT_SUCCESS[weak]:.0f}%"):
        demo_ready([weak], "down_tasks")
    demo_ready(list(SPLITS["down"]), "down_tasks")  # the named splits all have reliable experts
