"""Plain help text for the CLI: flags without a value type, repeatable options by their element, bare argument names.

Typer's rich help shows `--json <bool>` for a flag that takes no value, `<list[Path]>` for a repeatable option and
`{path}` for a required argument in the usage line. These click classes keep the parsing and fix only the text.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


def _plain_metavar(param: Any) -> None:
    """A flag shows no value type; an option or argument keeps any metavar given explicitly."""
    if getattr(param, "metavar", None) is None and (getattr(param, "is_flag", False) or getattr(param, "count", False)):
        param.metavar = ""


def _usage_pieces(command: Any, ctx: Any) -> list[str]:
    """`[OPTIONS] PATH` rather than `[OPTIONS] {path}`: arguments by their upper-case name, optional ones in []."""
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if getattr(param, "param_type_name", "") != "argument":
            continue
        name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
        pieces.append(name if param.required else f"[{name}]")
    return pieces


class PlainHelpCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _plain_metavar(p)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage_pieces(self, ctx)


class PlainHelpGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            _plain_metavar(p)
        return params


class PlainHelpTyper(typer.Typer):
    """A Typer app whose commands (and the app itself) use the plain help classes above."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=PlainHelpGroup, **kwargs)

    def command(self, *args: Any, cls: type | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or PlainHelpCommand, **kwargs)
