"""`capvector train` as a typer command: a short run writes a loadable policy; bad input is a CapvectorError."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from capvector.commands.train import train_command
from capvector.errors import CapvectorError
from capvector.policy import load_policy
from capvector.train import OrthSettings, TrainConfig


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
    with pytest.raises(CapvectorError, match="--orth-weight set but no --orth-vector"):
        train_command(output=tmp_path / "r1", orth_weight=1e-3, embedder="hash")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CapvectorError, match=r"train config .*list.json: expected a JSON object, found list"):
        train_command(output=tmp_path / "r3", config=tmp_path / "list.json")
    (tmp_path / "cut.json").write_text('{"steps": ')
    with pytest.raises(CapvectorError, match=r"train config .*cut.json: cannot read JSON"):
        train_command(output=tmp_path / "r4", config=tmp_path / "cut.json")


def test_every_train_config_field_is_an_option_with_help():
    from dataclasses import fields

    command = typer.main.get_command(_app()).commands["train"]
    options = {p.name: p for p in command.params if isinstance(p, typer.core.TyperOption)}
    on_cli = [f for f in fields(TrainConfig) if f.metadata["cli"]]
    assert {f.name for f in fields(TrainConfig) if not f.metadata["cli"]} == {"output_dir", "gse_options"}
    for f in on_cli:
        assert f.name in options and f.metadata["help"] and options[f.name].help.startswith(f.metadata["help"])
    assert options["snapshot_steps"].opts == ["--snapshot-step"] and options["snapshot_steps"].multiple
    for f in fields(OrthSettings):  # the regulariser's settings, as --orth-*
        assert options[f"orth_{f.name}"].opts == [f"--orth-{f.name}"]
    assert options["aux_layernorm"].secondary_opts == ["--no-aux-layernorm"]


def test_flags_override_the_config_file_and_unset_flags_leave_it(tmp_path):
    cfg_file = tmp_path / "train.json"
    cfg_file.write_text(json.dumps({"steps": 9, "log_every": 2, "also_train": ["vlm.*"], "aux_layernorm": False,
                                    "lora_targets": ["q_proj"]}))
    args = ["train", "-o", str(tmp_path / "run"), "--config", str(cfg_file), "--data", "synthetic:16", "--steps", "2",
            "--batch-size", "4", "--snapshot-step", "1", "--lora-dropout", "0.25", "--init", str(tmp_path / "nowhere"),
            "--width", "32", "--depth", "2", "--embedder", "hash", "--threads", "1"]
    res = CliRunner().invoke(_app(), args)
    # --init fixes the architecture: the command refuses before training, after resolving the config.
    assert "fixes the architecture" in str(res.exception)
    res = CliRunner().invoke(_app(), [a for a in args if a not in ("--init", str(tmp_path / "nowhere"))])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    expected = dict(TrainConfig().to_dict(), output_dir=str(tmp_path / "run"), steps=2, batch_size=4, log_every=2,
                    also_train=["vlm.*"], aux_layernorm=False, lora_targets=["q_proj"], snapshot_steps=[1],
                    lora_dropout=0.25, threads=1, progress=False)
    assert saved == expected


def test_config_options_reject_a_field_with_no_command_line_form():
    from dataclasses import dataclass, field

    from capvector.commands.config_options import config_parameters

    @dataclass
    class Nested:
        table: dict = field(default_factory=dict, metadata={"help": "a table", "cli": True})

    with pytest.raises(TypeError, match=r"Nested.table: no command-line form"):
        config_parameters(Nested)
