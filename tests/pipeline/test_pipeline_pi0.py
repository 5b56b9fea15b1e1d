"""The tiny pi0 in the recipe's stages: rollouts through the evaluator (loaded by type from its directory), and
`capvector pretrain --policy` refusing an unknown architecture before any work."""

from __future__ import annotations

import json

from capvector.pipeline.work import Evaluate
from capvector.policy import Pi0Config, TinyPi0, save_policy
from testing_common import run_cli


def test_rollouts_of_a_tiny_pi0(tmp_path):
    cfg = Pi0Config(image_size=32, width=32, depth=1, heads=2, embedder="hash", expert_width=16, expert_depth=1)
    policy_dir = save_policy(TinyPi0(cfg), tmp_path / "pi0")
    out = tmp_path / "eval"
    out.mkdir()
    summary = Evaluate(str(policy_dir), "reach-v3", episodes=1, seed=0, max_steps=3, workers=1)(out)
    assert summary["n_episodes"] == 1
    assert json.loads((out / "eval.json").read_text())["overall"]["n_episodes"] == 1


def test_pretrain_refuses_an_unknown_policy_type_before_any_work(tmp_path):
    r = run_cli("pretrain", "-o", tmp_path / "out", "--run-dir", tmp_path / "run", "--policy", "tiny-nope")
    assert r.code == 2 and "unknown policy type 'tiny-nope'" in r.stderr + r.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_the_recorded_regenerate_command_names_what_changes_the_result():
    from pathlib import Path

    from capvector.pipeline.pretrain import PretrainConfig, _regenerate_command

    out = Path("src/capvector/assets/tiny_vla_pretrained")
    assert _regenerate_command(out, PretrainConfig()) == f"capvector pretrain -o {out} --overwrite"  # as shipped
    pi0 = PretrainConfig(threads=1, workers=1, policy={"embedder": "minilm", "policy_type": "tiny-pi0"})
    assert _regenerate_command(Path("o"), pi0) == "capvector pretrain --policy tiny-pi0 --threads 1 -o o --overwrite"


def test_the_pipeline_policy_qualifies_presets_and_picks_its_shipped_weights(tmp_path):
    import pytest

    from capvector.errors import CapvectorError
    from capvector.pipeline import PipelineConfig
    from capvector.pipeline.recipe import resolve_pretrained
    from capvector.policy import read_policy_config, type_of

    cfg = PipelineConfig.for_mode("quick", policy="tiny-pi0")
    assert cfg.vector_preset == "tiny-pi0:vlm+expert" and cfg.preset_sweep == ("tiny-pi0:vlm",)
    assert PipelineConfig().vector_preset == "tiny-vla:vlm+expert"  # what runs recorded before the field existed
    shipped = resolve_pretrained(None, "tiny-pi0")
    assert type_of(read_policy_config(shipped)).name == "tiny-pi0"
    with pytest.raises(CapvectorError, match="preset 'tiny-vla:vlm' selects tiny-vla parameters but the policy is "
                                             "tiny-pi0"):
        PipelineConfig(policy="tiny-pi0", vector_preset="tiny-vla:vlm")
    with pytest.raises(CapvectorError, match="policy must be one of"):
        PipelineConfig(policy="tiny-nope")
    with pytest.raises(CapvectorError, match="says policy_type 'tiny-pi0' but the pipeline config's policy is "
                                             "'tiny-vla'"):
        resolve_pretrained(str(shipped), "tiny-vla")
