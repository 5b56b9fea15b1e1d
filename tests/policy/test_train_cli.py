"""`capvector train` as a typer command: a short run writes a loadable policy; bad input is a CapvectorError."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from capvector.commands.train import train_command
from capvector.errors import CapvectorError
from capvector.policy import load_policy


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("version")(lambda: None)  # a second command keeps `train` a subcommand
    return app


def test_train_command_runs_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "-o", str(out), "--data", "synthetic:32", "--steps", "3", "--batch-size", "8", "--width", "32",
            "--depth", "2", "--embedder", "hash", "--aux-weight", "0.5", "--threads", "1", "--json"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["steps"] == 3
    policy = load_policy(summary["policy"])
    assert policy.config.width == 32 and policy.config.depth == 2
    # Asking for more steps continues the same run from its last checkpoint.
    res2 = CliRunner().invoke(_app(), [*args[:6], "5", *args[7:]])
    assert res2.exit_code == 0, res2.output
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 5]  # logged at the end of each invocation (log_every 10)


def test_train_command_bad_input(tmp_path):
    res = CliRunner().invoke(_app(), ["train", "-o", str(tmp_path / "r"), "--data", str(tmp_path / "missing")])
    assert isinstance(res.exception, CapvectorError) and "no such path" in str(res.exception)
    with pytest.raises(CapvectorError, match="tuner must be one of"):
        train_command(output=tmp_path / "r2", tuner="qlora", embedder="hash")
