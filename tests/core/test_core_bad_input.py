"""Bad input: a clear error naming file/key/values, exit code != 0, and nothing half-written left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from capvector import extract, merge
from capvector.errors import CapvectorError
from testing_common import run_cli, write_st

CLI = [sys.executable, "-m", "capvector.cli"]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "partial output left"


@pytest.fixture
def pair(tmp_path):
    gen = torch.Generator().manual_seed(0)
    s = {"a.weight": torch.randn(4, 4, generator=gen), "b.weight": torch.randn(3, generator=gen)}
    a = {k: v + 0.1 for k, v in s.items()}
    return write_st(tmp_path / "sft", s), write_st(tmp_path / "aux", a), tmp_path


def test_key_sets_differ_needs_allow_missing(pair):
    sft, aux, tmp = pair
    tensors = {"a.weight": torch.ones(4, 4), "b.weight": torch.ones(3), "projector.0.weight": torch.ones(2, 2)}
    write_st(tmp / "aux2", tensors)
    r = run_cli("extract", "--sft", sft, "--aux", tmp / "aux2", "-o", tmp / "v")
    assert r.code == 2
    assert "1 tensors only in aux" in r.stderr and "projector.0.weight" in r.stderr and "--allow-missing" in r.stderr
    assert_nothing_written(tmp / "v")
    res = extract(sft, tmp / "aux2", tmp / "v", allow_missing=True, progress=False)
    assert res.skipped == {"aux_only": ["projector.0.weight"]} and res.tensors == 2


def test_shape_mismatch(pair):
    sft, _, tmp = pair
    write_st(tmp / "aux2", {"a.weight": torch.ones(4, 5), "b.weight": torch.ones(3)})
    with pytest.raises(CapvectorError, match=r"'a.weight': shape \[4, 4\] in sft .* but \[4, 5\] in aux"):
        extract(sft, tmp / "aux2", tmp / "v", progress=False)
    assert_nothing_written(tmp / "v")


def test_non_float_tensors(pair):
    _, _, tmp = pair
    write_st(tmp / "s", {"w": torch.ones(2), "steps": torch.tensor([3])})
    write_st(tmp / "a", {"w": torch.zeros(2), "steps": torch.tensor([3])})
    res = extract(tmp / "s", tmp / "a", tmp / "v", progress=False)
    assert res.skipped == {"non_float_equal": ["steps"]}
    write_st(tmp / "a2", {"w": torch.zeros(2), "steps": torch.tensor([4])})
    with pytest.raises(CapvectorError, match=r"'steps': non-float tensor \(torch.int64\) differs"):
        extract(tmp / "s", tmp / "a2", tmp / "v2", progress=False)
    assert_nothing_written(tmp / "v2")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_inputs(pair, bad):
    sft, _, tmp = pair
    t = torch.ones(4, 4)
    t[2, 1] = bad
    write_st(tmp / "aux2", {"a.weight": t, "b.weight": torch.ones(3)})
    with pytest.raises(CapvectorError, match=r"aux2.*model.safetensors.*'a.weight' contains NaN or Inf"):
        extract(sft, tmp / "aux2", tmp / "v", progress=False)
    assert_nothing_written(tmp / "v")


def test_truncated_input_gives_clean_error(pair):
    sft, aux, tmp = pair
    f = aux / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "v")
    assert r.code == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr
    assert_nothing_written(tmp / "v")


def test_output_exists_and_overwrite(pair):
    sft, aux, tmp = pair
    (tmp / "v").mkdir()
    (tmp / "v" / "keep").write_text("x")
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "v")
    assert r.code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert (tmp / "v" / "keep").exists()
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "v", "--overwrite")
    assert r.code == 0, r.stderr
    assert not (tmp / "v" / "keep").exists() and (tmp / "v" / "capvector.json").exists()


def test_output_equal_to_an_input(pair):
    sft, aux, tmp = pair
    for target in (aux, aux / "sub"):
        r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", target, "--overwrite")
        assert r.code == 2 and "overlaps input" in r.stderr
    assert sorted(p.name for p in aux.iterdir()) == ["model.safetensors"]


def test_vector_from_other_architecture(llama_trio, tmp_path):
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", progress=False)
    other = tmp_path / "other"
    write_st(other, {"encoder.weight": torch.ones(2, 2)})
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    r = run_cli("merge", "--base", other, "--vector", tmp_path / "v", "-o", tmp_path / "m")
    assert r.code == 2 and "LlamaForCausalLM" in r.stderr and "BertModel" in r.stderr
    (other / "config.json").unlink()
    with pytest.raises(CapvectorError, match="none of its .* tensors exist in base"):
        merge(other, [tmp_path / "v"], tmp_path / "m", progress=False)
    assert_nothing_written(tmp_path / "m")


def test_merge_missing_and_shape_mismatch(pair):
    sft, aux, tmp = pair
    extract(sft, aux, tmp / "v", progress=False)
    write_st(tmp / "base1", {"a.weight": torch.ones(4, 4)})
    with pytest.raises(CapvectorError, match=r"1 of 2 vector tensors are missing .*'b.weight'"):
        merge(tmp / "base1", [tmp / "v"], tmp / "m", progress=False)
    recipe = merge(tmp / "base1", [tmp / "v"], tmp / "m", allow_missing=True, progress=False)
    assert recipe["warnings"] and "skipped" in recipe["warnings"][0]
    write_st(tmp / "base2", {"a.weight": torch.ones(2, 8), "b.weight": torch.ones(3)})
    with pytest.raises(CapvectorError, match=r"'a.weight': base .* has shape \[2, 8\], vector .* has \[4, 4\]"):
        merge(tmp / "base2", [tmp / "v"], tmp / "m2", progress=False)
    assert_nothing_written(tmp / "m2")


def test_sigkill_during_merge_leaves_no_complete_output(tmp_path):
    """Big enough that merge is still writing when killed; nothing at the target path afterwards."""
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(1024, 1024, generator=gen) for i in range(48)}  # ~200 MB
    base = tmp_path / "base"
    base.mkdir()
    save_file(tensors, base / "model.safetensors")
    vec_src = tmp_path / "s"
    vec_src.mkdir()
    os.link(base / "model.safetensors", vec_src / "model.safetensors")
    extract(vec_src, base, tmp_path / "v", progress=False, hash_sources=False)  # zero vector, same size
    out = tmp_path / "m"
    proc = subprocess.Popen([*CLI, "merge", "--base", str(base), "--vector", str(tmp_path / "v"), "-o", str(out),
                             "--no-hash"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".m.partial-") for p in tmp_path.iterdir()):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed merge must not leave a directory at the target path"
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".m.partial-")]
    assert partial, "the merge was killed before it started writing; the test did not exercise anything"
