"""Hub ids as inputs, resolved offline from a Hugging Face cache laid out as `hf download` leaves it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

import capvector
from capvector.errors import CapvectorError
from capvector.io.hashing import files_digest

COMMIT = {"pre": "a" * 40, "sft": "b" * 40, "aux-old": "c" * 40, "aux": "d" * 40}


def add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",),
                 lfs: tuple[str, ...] = ("model.safetensors",)) -> Path:
    """models--ORG--NAME/{blobs,snapshots/COMMIT,refs}: LFS blobs named by sha256, others by git's sha1."""
    store = cache / ("models--" + repo.replace("/", "--"))
    snapshot = store / "snapshots" / commit
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        if name in lfs:
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (store / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob)
    (store / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (store / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Three repos: org/pre, org/sft, org/aux (main = the new aux, an older commit still cached)."""
    from huggingface_hub import constants

    torch.manual_seed(0)
    pre = {"w": torch.randn(6, 4), "b": torch.randn(6)}
    sft = {k: v + 0.1 * torch.randn_like(v) for k, v in pre.items()}
    aux_old = {k: v + 0.1 * torch.randn_like(v) for k, v in sft.items()}
    aux = {k: v + 0.1 * torch.randn_like(v) for k, v in sft.items()}
    cache = tmp_path / "hub"
    config = json.dumps({"architectures": ["Tiny"]}).encode()
    for repo, commit, tensors, refs in (("org/pre", COMMIT["pre"], pre, ("main",)),
                                        ("org/sft", COMMIT["sft"], sft, ("main",)),
                                        ("org/aux", COMMIT["aux-old"], aux_old, ("v1",)),
                                        ("org/aux", COMMIT["aux"], aux, ("main",))):
        add_snapshot(cache, repo, commit, {"model.safetensors": save(tensors), "config.json": config}, refs)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, {"pre": pre, "sft": sft, "aux-old": aux_old, "aux": aux}


def test_hub_ids_resolve_from_the_cache_with_revisions(hub_cache, tmp_path):
    cache, weights = hub_cache
    capvector.extract("org/sft", "org/aux", tmp_path / "vec", pretrained="org/pre@main", progress=False)
    capvector.extract("org/sft", f"org/aux@{COMMIT['aux-old']}", tmp_path / "vec-old", progress=False)
    capvector.extract("org/sft", "org/aux@v1", tmp_path / "vec-v1", progress=False)
    capvector.merge("org/pre", [capvector.VectorWeight(tmp_path / "vec", 0.5)], tmp_path / "merged", progress=False)

    merged = load_file(tmp_path / "merged" / "model.safetensors")
    old = load_file(tmp_path / "vec-old" / "vector.safetensors")
    for name, value in weights["pre"].items():
        torch.testing.assert_close(merged[name], value + 0.5 * (weights["aux"][name] - weights["sft"][name]))
        torch.testing.assert_close(old[name], weights["aux-old"][name] - weights["sft"][name])
    assert json.loads((tmp_path / "merged" / "config.json").read_text()) == {"architectures": ["Tiny"]}
    meta = json.loads((tmp_path / "vec" / "capvector.json").read_text())
    assert meta["sources"]["aux"]["path"].endswith(f"models--org--aux/snapshots/{COMMIT['aux']}")
    assert meta["base_model"] == "org/pre"
    assert (tmp_path / "vec-v1" / "capvector.json").read_text().count(COMMIT["aux-old"]) == 1


def test_cached_files_are_hashed_by_their_blob_name(hub_cache, tmp_path):
    cache, _ = hub_cache
    snapshot = cache / "models--org--pre" / "snapshots" / COMMIT["pre"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes((snapshot / "model.safetensors").read_bytes())
    assert files_digest(snapshot, ["model.safetensors"]) == files_digest(plain, ["model.safetensors"])
    # The digest comes from the blob's name: a (hypothetically) corrupted blob keeps its recorded hash.
    blob = (snapshot / "model.safetensors").resolve()
    before = files_digest(snapshot, ["model.safetensors"])
    blob.chmod(0o644)
    blob.write_bytes(b"not read")
    assert files_digest(snapshot, ["model.safetensors"]) == before


def test_missing_hub_id_is_one_line_naming_the_download(hub_cache, tmp_path):
    with pytest.raises(CapvectorError, match=r"org/absent.*hf download org/absent --revision v2"):
        capvector.inspect("org/absent@v2")
    with pytest.raises(CapvectorError, match=r"no such file or directory"):
        capvector.inspect(tmp_path / "org" / "absent")  # a path, not an id
    # Through the CLI, with the network allowed: capvector still never asks the Hub, so no wait.
    cache, _ = hub_cache
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_HUB_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-m", "capvector", "merge", "--base", "org/absent", "--vector", "org/pre",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "hf download org/absent" in r.stderr and not (tmp_path / "out").exists()
