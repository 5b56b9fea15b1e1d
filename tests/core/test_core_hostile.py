"""Hostile input and faults (issue 17): each class is a one-line error with exit 2, never exit 0 with a
broken output, never a traceback, nothing left behind, inputs untouched."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_st
from hostile import assert_user_error, cli, leftovers, tree_digest
from safetensors.torch import load_file


def _vector(tmp, base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], name: str = "v"):
    sft = write_st(tmp / f"{name}_sft", base)
    aux = write_st(tmp / f"{name}_aux", {k: v + delta[k] for k, v in base.items()})
    r = cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / name, "--no-hash")
    assert r.code == 0, r.stderr
    return tmp / name


# ---------------------------------------------------------------- 1. overflow on the final cast
def test_merge_to_fp16_overflow_is_an_error(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.full((4, 4), 7e4, dtype=torch.bfloat16)})
    vec = _vector(tmp_path, {"w": torch.zeros(4, 4)}, {"w": torch.full((4, 4), 0.5)})
    before = tree_digest(base, vec)
    r = cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--dtype", "fp16", "--no-hash")
    assert_user_error(r, "'w'", "float16", "7")
    assert leftovers(tmp_path / "m") == [] and tree_digest(base, vec) == before


def test_merge_copying_an_untouched_tensor_to_fp16_checks_overflow(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.zeros(2, 2), "big": torch.full((3,), 1e5, dtype=torch.bfloat16)})
    vec = _vector(tmp_path, {"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)})
    r = cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--dtype", "fp16", "--no-hash")
    assert_user_error(r, "'big'", "float16")


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_extract_overflow_after_cast_is_an_error(tmp_path, dtype):
    big = 7e4 if dtype == "fp16" else 3.4e38  # above bf16's largest finite 3.39e38
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.full((2, 2), big)})
    r = cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--dtype", dtype, "--no-hash")
    assert_user_error(r, "'w'", "overflows")
    assert leftovers(tmp_path / "v") == []


def test_merge_within_range_still_works(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.full((4, 4), 6e4, dtype=torch.bfloat16)})
    vec = _vector(tmp_path, {"w": torch.zeros(4, 4)}, {"w": torch.full((4, 4), 0.5)})
    r = cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--dtype", "fp16", "--no-hash")
    assert r.code == 0, r.stderr
    out = load_file(tmp_path / "m" / "model.safetensors")["w"]
    expected = torch.tensor(float(torch.tensor(6e4, dtype=torch.bfloat16)) + 0.5).to(torch.float16)
    assert out.dtype == torch.float16 and torch.equal(out, torch.full((4, 4), float(expected), dtype=torch.float16))
    assert math.isfinite(float(out.max()))


def test_norm_of_large_finite_values_is_finite(tmp_path):
    """Found while testing class 1: ‖τ‖ of values near the fp32 limit was reported as inf (fp32 sum of squares)."""
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.full((2, 2), 1e30)})
    r = cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["norm"] == pytest.approx(2e30, rel=1e-6)


# ---------------------------------------------------------------- 5. --max-shard-size grammar
@pytest.mark.parametrize("text", ["1e", "..", "1.5.5GB", "1e400", "0", "0GB", "-1", "1e-9", "inf", "nan", "5XB", "Mi",
                                  "1iB", ""])
def test_bad_shard_sizes_are_refused(tmp_path, text):
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2, 2)})
    r = cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--max-shard-size", text, "--no-hash")
    assert_user_error(r, "size")
    assert leftovers(tmp_path / "v") == []


@pytest.mark.parametrize(("text", "size"), [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("2e9", 2 * 10**9),
                                            ("1.5kb", 1500), (".5K", 500), ("7", 7), (" 3 MB ", 3 * 10**6)])
def test_good_shard_sizes(text, size):
    from capvector.io import parse_size

    assert parse_size(text) == size


# ---------------------------------------------------------------- 6. selections that match nothing
@pytest.fixture
def small(tmp_path):
    base = write_st(tmp_path / "base", {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(3)})
    vec = _vector(tmp_path, {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(3)},
                  {"a.weight": torch.ones(2, 2), "b.weight": torch.ones(3)})
    return base, vec, tmp_path


@pytest.mark.parametrize("rules", [{"*typo*": 1.0}, {"a.*": 1.0, "*tpyo*": 0.5}, {"*": 1.0, "a.*": 0.5}])
def test_weight_rule_that_selects_nothing_is_an_error(small, rules):
    base, vec, tmp = small
    (tmp / "w.json").write_text(json.dumps(rules))
    r = cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "select nothing")
    assert leftovers(tmp / "m") == []


def test_weight_rule_that_selects_nothing_allowed_with_a_warning(small):
    base, vec, tmp = small
    (tmp / "w.json").write_text(json.dumps({"a.*": 0.5, "*tpyo*": 0.5}))
    r = cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash",
            "--allow-missing", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["merged_tensors"] == 1 and "*tpyo*" in r.stderr


def test_nothing_merged_is_an_error(small):
    base, vec, tmp = small
    (tmp / "w.json").write_text(json.dumps({"*typo*": 1.0}))
    r = cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash",
            "--allow-missing")
    assert_user_error(r, "output would equal the base")
    assert leftovers(tmp / "m") == []


@pytest.mark.parametrize("value", ["true", "false", "NaN", "Infinity", '"1"', "null", "[1]"])
def test_weights_file_values_must_be_finite_numbers(small, value):
    base, vec, tmp = small
    (tmp / "w.json").write_text(f'{{"*": {value}}}')
    r = cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "w.json")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_scalar_weight_must_be_finite(small, value):
    base, vec, tmp = small
    r = cli("merge", "--base", base, "--vector", vec, "--weight", value, "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "finite")


def test_same_vector_twice_is_an_error(small):
    base, vec, tmp = small
    r = cli("merge", "--base", base, "--vector", vec, "--vector", tmp / "." / "v", "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "given twice")
    assert leftovers(tmp / "m") == []


def test_include_that_matches_nothing(small):
    _, _, tmp = small
    args = ["extract", "--sft", tmp / "v_sft", "--aux", tmp / "v_aux", "-o", tmp / "v2", "--no-hash",
            "--include", "a.*", "--include", "*tpyo*"]
    assert_user_error(cli(*args), "'*tpyo*'", "matches no tensor")
    assert leftovers(tmp / "v2") == []
    r = cli(*args, "--allow-missing", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["tensors"] == 1
    assert json.loads((tmp / "v2" / "capvector.json").read_text())["skipped"] == {"unmatched_include": ["*tpyo*"]}
