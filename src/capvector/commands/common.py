"""What every command shares: one-line user errors (exit 2), SIGTERM cleanup (exit 143), library warnings on stderr,
and the JSON-or-line result print."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from capvector.errors import CapvectorError
from capvector.extras import missing_extra

console = Console(stderr=True)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that every `with` block cleans up."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise Terminated()


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM (docker stop, kill, a batch scheduler) unwinds the stack: partial
    outputs are removed as on Ctrl-C, and the process exits 143 (128 + 15) as the shell expects."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        console.print("[bold red]error:[/] terminated (SIGTERM); partial output removed", highlight=False)
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit now, skipping interpreter finalisation: a helper thread still inside a read or write (torch, C++)
        # when the interpreter tears down aborts the process instead of exiting 143.
        os._exit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ConsoleNotices(logging.Handler):
    """Library warnings (e.g. a stale partial output removed) as one `warning:` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


@contextmanager
def _library_notices() -> Iterator[None]:
    logger, handler = logging.getLogger("capvector"), _ConsoleNotices(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CapvectorError, a file-system error or a module missing because an extra is not installed into one
    line on stderr and exit code 2; SIGTERM into cleanup and 143."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_unwinds(), _library_notices():
                return fn(*args, **kwargs)
        except CapvectorError as e:
            fail(str(e))
        except ModuleNotFoundError as e:
            error = missing_extra(e)
            if error is None:
                raise
            fail(str(error))
        except OSError as e:  # the environment, not our code: a file system error the library did not wrap
            fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))

    return wrapper


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def emit(data: dict, as_json: bool, line: str) -> None:
    """The result as indented JSON on stdout, or as one human line."""
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        Console().print(line, highlight=False)


def load_families() -> None:
    """Register the VLA families' presets (`pi0:vlm+expert`, ...). Called by the commands that take
    presets or families, not at start-up, so `capvector --help` loads nothing more."""
    import capvector.integrations  # noqa: F401
