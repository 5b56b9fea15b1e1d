"""What a user of the core sees first: light imports, `--version`, and help text without typer's internals."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

import capvector
from capvector.cli import app


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_library_imports_load_no_simulator_and_no_cli():
    # one fresh interpreter: the training library first (no typer yet), then the sim commands (no simulator)
    r = python("-c", "import sys, capvector.train; print('typer' in sys.modules); "
                     "import capvector.stats, capvector.sim, capvector.commands.sim; "
                     "print(sorted({'mujoco', 'metaworld'} & set(sys.modules)))")
    assert r.returncode == 0 and r.stdout.split() == ["False", "[]"], r.stdout + r.stderr


def test_version_through_the_module_entry_point():
    r = python("-m", "capvector", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"capvector {capvector.__version__}", r.stdout + r.stderr


def test_help_shows_flags_as_flags_and_plain_usage():
    runner = CliRunner()
    for command in ("extract", "merge", "inspect", "export-lora", "eval", "train", "report"):
        r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.output and "list[" not in r.output, r.output
        usage = next(line for line in r.output.splitlines() if "Usage:" in line)
        assert "{" not in usage and "<" not in usage, usage
    r = runner.invoke(app, ["inspect", "--help"], env={"COLUMNS": "200"})
    assert "inspect [OPTIONS] PATH" in r.output
    assert any(line.split()[1:3] == ["--json", "Print"] for line in r.output.splitlines()), r.output
