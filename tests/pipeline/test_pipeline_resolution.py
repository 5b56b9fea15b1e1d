"""The rendered resolution follows θ_pre: the demo's demos are collected, and every policy's rollouts rendered, at
the image size its config names, so a policy pretrained at a higher resolution runs through the whole recipe."""

from __future__ import annotations

import json

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline import PipelineConfig
from capvector.pipeline.pretrain import PretrainConfig, pretrain
from capvector.pipeline.recipe import DemoGraph
from capvector.pipeline.work import Evaluate
from capvector.policy import PolicyConfig, TinyVLA, read_policy_config, save_policy
from testing_common import run_cli


def _policy_dir(tmp_path, image_size: int):
    cfg = PolicyConfig(image_size=image_size, patch_size=8, width=32, depth=1, heads=2, embedder="hash")
    return save_policy(TinyVLA(cfg), tmp_path / f"policy{image_size}")


def test_config_is_read_back_as_written(tmp_path):
    directory = _policy_dir(tmp_path, 32)
    assert read_policy_config(directory) == TinyVLA(PolicyConfig(**json.loads(
        (directory / "config.json").read_text()))).config
    assert read_policy_config(directory).image_size == 32


def test_demos_are_collected_at_the_pretrained_resolution(tmp_path):
    shipped = DemoGraph(PipelineConfig.for_mode("quick"), tmp_path / "a")
    assert {s.params["image_size"] for s in shipped.stages if s.params.get("kind") == "collect"} == {64}
    graph = DemoGraph(PipelineConfig.for_mode("quick", pretrained=str(_policy_dir(tmp_path, 32))), tmp_path / "b")
    assert {s.params["image_size"] for s in graph.stages if s.params.get("kind") == "collect"} == {32}


def test_rollouts_render_at_the_policy_resolution(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    summary = Evaluate(str(_policy_dir(tmp_path, 32)), "reach-v3", episodes=1, seed=0, max_steps=3, workers=1)(out)
    assert summary["n_episodes"] == 1
    assert json.loads((out / "eval.json").read_text())["overall"]["n_episodes"] == 1


def test_a_shape_the_patches_do_not_tile_is_refused_before_any_work(tmp_path):
    with pytest.raises(CapvectorError, match="image_size 100 is not a multiple of patch_size 8"):
        pretrain(tmp_path / "out", PretrainConfig(policy={"embedder": "hash", "image_size": 100}), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()
    r = run_cli("pretrain", "-o", tmp_path / "out", "--run-dir", tmp_path / "run", "--image-size", 100)
    assert r.code == 2 and "not a multiple of patch_size" in r.stderr + r.stdout
    assert not (tmp_path / "run").exists()
