"""Options generated from config dataclasses: every field of `TrainConfig`, `OrthSettings`, `PretrainConfig` and
`TeacherConfig` is an option of its command (or declared as having no command-line form), with the field's help and
default, and the options given reach the config unchanged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

import pytest
import typer

from capvector.cli import app
from capvector.commands.config_options import with_config_options
from capvector.pipeline.pretrain import PretrainConfig
from capvector.pipeline.teacher import TeacherConfig
from capvector.train import OrthSettings, TrainConfig
from testing_common import run_cli

# command → (config class, option-name prefix, the fields that are declared to have no option)
GENERATED = [
    ("train", TrainConfig, "", {"output_dir", "gse_options"}),
    ("train", OrthSettings, "orth_", set()),
    ("pretrain", PretrainConfig, "", {"policy"}),
    ("teacher-pretrain", TeacherConfig, "", set()),
]


def _options(command: str) -> dict[str, typer.core.TyperOption]:
    click_command = typer.main.get_command(app).commands[command]
    return {p.name: p for p in click_command.params if isinstance(p, typer.core.TyperOption)}


@pytest.mark.parametrize(("command", "config", "prefix", "no_option"), GENERATED,
                         ids=[f"{c}-{k.__name__}" for c, k, _, _ in GENERATED])
def test_every_config_field_is_an_option_with_its_help_and_default(command, config, prefix, no_option):
    options = _options(command)
    fields = dataclasses.fields(config)
    assert {f.name for f in fields if not f.metadata["cli"]} == no_option
    for f in fields:
        if f.name in no_option:
            assert prefix + f.name not in options
            continue
        option = options[prefix + f.name]
        flag = f.metadata["flag"] or "--" + (prefix + f.name).replace("_", "-")
        assert option.opts == [flag], (f.name, option.opts)
        assert f.metadata["help"] and option.help.startswith(f.metadata["help"]), f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, int | float | str) and not isinstance(default, bool):
            assert option.help.endswith(f"(default: {default})"), (f.name, option.help)


def test_a_field_declared_without_its_help_is_refused():
    """A field added as a plain dataclass field would silently get no option: the generator refuses it instead."""

    @dataclass(frozen=True)
    class Recipe:
        steps: int = field(default=3, metadata={"help": "Steps.", "cli": True})
        forgotten: int = 4

    def command(overrides: dict | None = None) -> None:
        pass

    with pytest.raises(TypeError, match=r"Recipe.forgotten: declare it with cli_field"):
        with_config_options(Recipe)(command)


def test_pretrain_options_reach_the_config(tmp_path, monkeypatch):
    import capvector.pipeline.pretrain as module

    seen = []

    def fake_pretrain(output, cfg, run_dir, overwrite, log):
        seen.append(cfg)
        return {"eval": {"overall": {"pc_success": 50.0, "ci95": [10.0, 90.0], "n_episodes": 2}}}

    monkeypatch.setattr(module, "pretrain", fake_pretrain)
    r = run_cli("pretrain", "-o", tmp_path / "out", "--steps", 5, "--episodes", 3, "--lr", 0.001, "--image-size", 32,
                "--workers", 1)
    assert r.code == 0, r.stderr
    assert seen == [replace(PretrainConfig(), steps=5, episodes=3, lr=0.001, workers=1,
                            policy={"embedder": "minilm", "image_size": 32})]
    assert PretrainConfig().policy == {"embedder": "minilm"}  # the default's dict was not changed in place


def test_teacher_pretrain_options_reach_the_config(tmp_path, monkeypatch):
    import capvector.pipeline.teacher as module

    seen = []

    def fake_teacher_pretrain(output, cfg, run_dir, overwrite, log):
        seen.append(cfg)
        return {"held_out_quality": {"depth_cm": 1.0, "seg_acc": 0.9, "object_cm": 2.0}}

    monkeypatch.setattr(module, "teacher_pretrain", fake_teacher_pretrain)
    r = run_cli("teacher-pretrain", "-o", tmp_path / "out", "--episodes", 2, "--epochs", 3, "--noise", 0.2)
    assert r.code == 0, r.stderr
    assert seen == [replace(TeacherConfig(), episodes_per_task=2, epochs=3, noise=0.2)]
