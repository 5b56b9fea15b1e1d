"""`capvector collect` / `capvector eval` command functions through typer's test runner."""

import json

import pytest
import typer
from typer.testing import CliRunner

from capvector.commands.sim import collect_command, eval_command
from capvector.data import open_dataset
from capvector.errors import CapvectorError


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("collect")(collect_command)
    app.command("eval")(eval_command)
    return app


def test_collect_then_eval_expert(tmp_path):
    runner = CliRunner()
    out = runner.invoke(_app(), ["collect", "-o", str(tmp_path / "d"), "--split", "reach-v3", "--episodes", "1",
                                 "--image-size", "32", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["episodes"] == 1 and len(open_dataset(tmp_path / "d")) == summary["steps"]
    res = runner.invoke(_app(), ["eval", "--policy", "expert", "--split", "reach-v3", "--episodes", "2",
                                 "--image-size", "32", "--perturb", "lighting:0.5", "--perturb",
                                 "distractors:0.5+lighting:0.5@3", "-o", str(tmp_path / "e.json"), "--videos", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "e.json").read_text())
    assert info["overall"]["n_success"] == 4 and info["per_variant"]["lighting:0.5"]["pc_success"] == 100.0
    assert info["per_variant"]["lighting:0.5+distractors:0.5@3"]["n_episodes"] == 2
    assert (tmp_path / "videos" / "reach-v3_lighting-0.5_0.gif").stat().st_size > 0


def test_a_bad_scene_is_a_user_error(tmp_path):
    res = CliRunner().invoke(_app(), ["collect", "-o", str(tmp_path / "d"), "--split", "reach-v3",
                                      "--perturb", "camera:0.5@seven"])
    assert isinstance(res.exception, CapvectorError) and "integer seed after '@'" in str(res.exception)
    assert not (tmp_path / "d").exists()


def test_bad_policy_path_is_a_user_error(tmp_path):
    res = CliRunner().invoke(_app(), ["eval", "--policy", str(tmp_path / "missing"), "--split", "down"])
    assert isinstance(res.exception, CapvectorError) and "no such directory" in str(res.exception)


def test_policy_spec_names_the_experts_only_where_they_apply():
    """`capvector eval` may name the scripted experts; other commands (eval-libero) may not."""
    from capvector.sim.experts import ScriptedExpert
    from capvector.train import open_policy

    assert isinstance(open_policy("expert", experts=True), ScriptedExpert)
    with pytest.raises(CapvectorError, match="no such directory and not of the form module:callable"):
        open_policy("expert")
