"""The `capvector` command line: the app and its commands' registration (the commands live in `capvector.commands`).

The checkpoint commands need only the core install; the simulator, pipeline and plotting commands import their
extras when they run, and a missing extra is one line naming the pip command (exit 2).
"""

from __future__ import annotations

from typing import Annotated

import typer

from capvector._version import __version__
from capvector.commands import checkpoint, data, pipeline, sim, train
from capvector.commands.common import user_errors
from capvector.commands.plain_help import PlainHelpTyper

app = PlainHelpTyper(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"capvector {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    """Capability vectors (extract, merge, inspect) and VLA fine-tuning tools."""


COMMANDS = (
    ("extract", checkpoint.extract_command),
    ("merge", checkpoint.merge_command),
    ("export-lora", checkpoint.export_lora_command),
    ("inspect", checkpoint.inspect_command),
    ("demo", pipeline.demo_command),
    ("pipeline", pipeline.pipeline_command),
    ("report", pipeline.report_command),
    ("compare", pipeline.compare_command),
    ("collect", sim.collect_command),
    ("train", train.train_command),
    ("eval", sim.eval_command),
    ("pretrain", pipeline.pretrain_command),
    ("teacher-pretrain", pipeline.teacher_pretrain_command),
    ("eval-libero", sim.eval_libero_command),
    ("presets", checkpoint.presets_command),
)
for _name, _command in COMMANDS:
    app.command(_name)(user_errors(_command))

data_app = PlainHelpTyper(no_args_is_help=True, help="Demo datasets in other formats (LeRobotDataset v3.0).")
data_app.command("export")(user_errors(data.export_command))
app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
