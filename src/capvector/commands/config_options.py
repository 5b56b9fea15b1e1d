"""Command-line options generated from a config dataclass, so a field added to the config is an option too,
without a second declaration.

Every field is declared with `capvector.train.config.cli_field` (a plain field is an error here, so a new field
cannot be left without an option by accident). Each field with `cli` metadata true becomes `--field-name` (or its
`flag` metadata), typed from the field's annotation, with the field's `help` metadata as help text and its default
shown. An option the user does not give stays unset, so a config file (or the dataclass default) decides; the
command receives only the options given, as a dict (`overrides` unless named otherwise).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Annotated, Any

import typer

OVERRIDES = "overrides"
_SCALARS = (bool, int, float, str)


def _cli_type(owner: type, f: Field, hint: Any) -> Any:
    """The option's type: the field's, without None, preferring a list where the field also takes one value;
    a field with no command-line form (a dict, a nested config) is an error here, so it must say `cli=False`."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    choices = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    lists = [a for a in choices if typing.get_origin(a) is list]
    if f.metadata.get("path"):  # text or a Path in Python; a path on the command line
        return list[Path] if lists else Path
    base = lists[0] if lists else choices[0] if len(choices) == 1 else None
    item = typing.get_args(base)[0] if typing.get_origin(base) is list else base
    if item not in _SCALARS:
        raise TypeError(f"{owner.__name__}.{f.name}: no command-line form for {hint}; give it cli=False")
    return base


def _default_text(f: Field, flag: str) -> str | None:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is None or value is dataclasses.MISSING or value == []:
        return None
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def config_parameters(owner: type, prefix: str = "") -> list[inspect.Parameter]:
    """One keyword parameter per command-line field of the dataclass `owner` (named `prefix` + field name),
    annotated for typer."""
    hints = typing.get_type_hints(owner)
    params = []
    for f in dataclasses.fields(owner):
        if "help" not in f.metadata:
            raise TypeError(f"{owner.__name__}.{f.name}: declare it with cli_field (help text; cli=False where it "
                            "has no command-line form)")
        if not f.metadata.get("cli"):
            continue
        cli_type = _cli_type(owner, f, hints[f.name])
        flag = f.metadata.get("flag") or f"--{(prefix + f.name).replace('_', '-')}"
        decls = [flag] if cli_type is not bool else [f"{flag}/--no-{flag[2:]}"]
        default = _default_text(f, flag)
        option = typer.Option(*decls, help=f.metadata["help"] + (f" (default: {default})" if default else ""),
                              metavar=f.metadata.get("metavar"), show_default=False)
        params.append(inspect.Parameter(prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[cli_type | None, option]))
    return params


def with_config_options(owner: type, into: str = OVERRIDES,
                        prefix: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command that takes a parameter `into` (default `overrides`): the command line gets one option per
    field of `owner` (`--PREFIX-FIELD`), listed where `into` stands in the signature, and the command receives the
    options given as a dict by field name (paths as text). Decorators stack, one per dataclass."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True).parameters
        generated = config_parameters(owner, prefix)
        names = {p.name for p in generated}
        if into not in own or names & set(own):
            raise TypeError(f"{command.__name__} must take {into!r} and no parameter named like a generated "
                            f"{owner.__name__} option ({sorted(names & set(own))})")

        def run(**kwargs: Any) -> Any:
            given = {n.removeprefix(prefix): kwargs.pop(n, None) for n in names}
            return command(**kwargs, **{into: {n: _plain(v) for n, v in given.items() if v is not None}})

        params = []
        for p in own.values():
            params.extend(generated if p.name == into else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)])
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__, run.__qualname__, run.__doc__ = command.__name__, command.__qualname__, command.__doc__
        run.__module__ = command.__module__
        return run

    return decorate


def _plain(value: Any) -> Any:
    """A parsed option as the config stores it: paths as text, repeated options as a list."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
