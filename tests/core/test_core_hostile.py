"""Hostile input and faults (issue 17): each class is a one-line error with exit 2, never exit 0 with a
broken output, never a traceback, nothing left behind, inputs untouched."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hostile import assert_user_error, leftovers, raw_safetensors, tree_digest
from safetensors.torch import load_file

from testing_common import run_cli, write_st


def _vector(tmp, base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], name: str = "v"):
    sft = write_st(tmp / f"{name}_sft", base)
    aux = write_st(tmp / f"{name}_aux", {k: v + delta[k] for k, v in base.items()})
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / name, "--no-hash")
    assert r.code == 0, r.stderr
    return tmp / name


# ---------------------------------------------------------------- 1. overflow on the final cast
def test_merge_to_fp16_overflow_is_an_error(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.full((4, 4), 7e4, dtype=torch.bfloat16)})
    vec = _vector(tmp_path, {"w": torch.zeros(4, 4)}, {"w": torch.full((4, 4), 0.5)})
    before = tree_digest(base, vec)
    r = run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--dtype", "fp16", "--no-hash")
    assert_user_error(r, "'w'", "float16", "7")
    assert leftovers(tmp_path / "m") == [] and tree_digest(base, vec) == before


def test_merge_copying_an_untouched_tensor_to_fp16_checks_overflow(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.zeros(2, 2), "big": torch.full((3,), 1e5, dtype=torch.bfloat16)})
    vec = _vector(tmp_path, {"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)})
    r = run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--dtype", "fp16", "--no-hash")
    assert_user_error(r, "'big'", "float16")


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_extract_overflow_after_cast_is_an_error(tmp_path, dtype):
    big = 7e4 if dtype == "fp16" else 3.4e38  # above bf16's largest finite 3.39e38
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.full((2, 2), big)})
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--dtype", dtype, "--no-hash")
    assert_user_error(r, "'w'", "overflows")
    assert leftovers(tmp_path / "v") == []


def test_merge_within_range_still_works(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.full((4, 4), 6e4, dtype=torch.bfloat16)})
    vec = _vector(tmp_path, {"w": torch.zeros(4, 4)}, {"w": torch.full((4, 4), 0.5)})
    r = run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--dtype", "fp16", "--no-hash")
    assert r.code == 0, r.stderr
    out = load_file(tmp_path / "m" / "model.safetensors")["w"]
    expected = torch.tensor(float(torch.tensor(6e4, dtype=torch.bfloat16)) + 0.5).to(torch.float16)
    assert out.dtype == torch.float16 and torch.equal(out, torch.full((4, 4), float(expected), dtype=torch.float16))
    assert math.isfinite(float(out.max()))


def test_norm_of_large_finite_values_is_finite(tmp_path):
    """Found while testing class 1: ‖τ‖ of values near the fp32 limit was reported as inf (fp32 sum of squares)."""
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.full((2, 2), 1e30)})
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["norm"] == pytest.approx(2e30, rel=1e-6)


# ---------------------------------------------------------------- 5. --max-shard-size grammar
@pytest.mark.parametrize("text", ["1e", "..", "1.5.5GB", "1e400", "0", "0GB", "-1", "1e-9", "inf", "nan", "5XB", "Mi",
                                  "1iB", ""])
def test_bad_shard_sizes_are_refused(tmp_path, text):
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2, 2)})
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--max-shard-size", text, "--no-hash")
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
    r = run_cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "select nothing")
    assert leftovers(tmp / "m") == []


def test_weight_rule_that_selects_nothing_allowed_with_a_warning(small):
    base, vec, tmp = small
    (tmp / "w.json").write_text(json.dumps({"a.*": 0.5, "*tpyo*": 0.5}))
    r = run_cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash",
            "--allow-missing", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["merged_tensors"] == 1 and "*tpyo*" in r.stderr


def test_nothing_merged_is_an_error(small):
    base, vec, tmp = small
    (tmp / "w.json").write_text(json.dumps({"*typo*": 1.0}))
    r = run_cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash",
            "--allow-missing")
    assert_user_error(r, "output would equal the base")
    assert leftovers(tmp / "m") == []


@pytest.mark.parametrize("value", ["true", "false", "NaN", "Infinity", '"1"', "null", "[1]"])
def test_weights_file_values_must_be_finite_numbers(small, value):
    base, vec, tmp = small
    (tmp / "w.json").write_text(f'{{"*": {value}}}')
    r = run_cli("merge", "--base", base, "--vector", vec, "--weights", tmp / "w.json", "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "w.json")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_scalar_weight_must_be_finite(small, value):
    base, vec, tmp = small
    r = run_cli("merge", "--base", base, "--vector", vec, "--weight", value, "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "finite")


def test_same_vector_twice_is_an_error(small):
    base, vec, tmp = small
    r = run_cli("merge", "--base", base, "--vector", vec, "--vector", tmp / "." / "v", "-o", tmp / "m", "--no-hash")
    assert_user_error(r, "given twice")
    assert leftovers(tmp / "m") == []


def test_include_that_matches_nothing(small):
    _, _, tmp = small
    args = ["extract", "--sft", tmp / "v_sft", "--aux", tmp / "v_aux", "-o", tmp / "v2", "--no-hash",
            "--include", "a.*", "--include", "*tpyo*"]
    assert_user_error(run_cli(*args), "'*tpyo*'", "matches no tensor")
    assert leftovers(tmp / "v2") == []
    r = run_cli(*args, "--allow-missing", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["tensors"] == 1
    assert json.loads((tmp / "v2" / "capvector.json").read_text())["skipped"] == {"unmatched_include": ["*tpyo*"]}


# ---------------------------------------------------------------- 4. malformed but valid JSON, validated at the reader
F32_4 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize(("header", "fragment"), [
    ({"w": {**F32_4, "shape": 4}}, "shape 4"),
    ({"w": {**F32_4, "shape": None}}, "shape None"),
    ({"w": {**F32_4, "shape": [2, -2, -1]}}, "non-negative"),
    ({"w": {**F32_4, "shape": [2.0, 2]}}, "shape"),
    ({"w": {**F32_4, "shape": [True, 4]}}, "shape"),
    ({"w": {**F32_4, "data_offsets": [0]}}, "data_offsets [0]"),
    ({"w": {**F32_4, "data_offsets": [0, 16, 32]}}, "data_offsets"),
    ({"w": {**F32_4, "data_offsets": "0-16"}}, "data_offsets"),
    ({"w": {**F32_4, "dtype": 32}}, "dtype 32"),
    ({"w": {**F32_4, "dtype": ["F32"]}}, "dtype"),
    ({"w": {**F32_4, "dtype": "F6_E2M3"}}, "does not support"),
    ({"w": F32_4, "__metadata__": ["format", "pt"]}, "__metadata__"),
    ({"w": F32_4, "__metadata__": {"format": 1}}, "__metadata__"),
    ({"w": F32_4, "v": F32_4}, "overlap"),
    ({"w": F32_4, "v": {**F32_4, "shape": [2], "data_offsets": [8, 16]}}, "overlap"),
    ({"w": [1, 2]}, "corrupted header entry"),
])
def test_malformed_safetensors_headers(tmp_path, header, fragment):
    raw_safetensors(tmp_path / "sft" / "model.safetensors", header, bytes(16))
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2, 2)})
    before = tree_digest(tmp_path / "sft")
    assert_user_error(run_cli("extract", "--sft", tmp_path / "sft", "--aux", aux, "-o", tmp_path / "v", "--no-hash"),
                      "model.safetensors", fragment)
    assert_user_error(run_cli("inspect", tmp_path / "sft"), fragment)
    assert leftovers(tmp_path / "v") == [] and tree_digest(tmp_path / "sft") == before


def test_duplicate_header_keys(tmp_path):
    raw = (b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
           b'"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}')
    raw_safetensors(tmp_path / "x" / "model.safetensors", None, bytes(16), header_bytes=raw)
    assert_user_error(run_cli("inspect", tmp_path / "x"), "duplicate key 'w'")


def test_tensors_listed_out_of_file_order_are_fine(tmp_path):
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes() + torch.ones(4).numpy().tobytes()
    header = {"b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
              "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    raw_safetensors(tmp_path / "x" / "model.safetensors", header, data)
    r = run_cli("inspect", tmp_path / "x", "--json")
    assert r.code == 0, r.stderr
    norms = {t["name"]: t["norm"] for t in json.loads(r.stdout)["tensors"]}
    assert norms == pytest.approx({"a": math.sqrt(14), "b": 2.0})


def _meta(vec):
    return json.loads((vec / "capvector.json").read_text())


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda m: [m], "top level"),
    (lambda m: {**m, "format_version": "one"}, "format_version"),
    (lambda m: {**m, "format_version": 1.5}, "format_version"),
    (lambda m: {**m, "format_version": None}, "format_version"),
    (lambda m: {**m, "default_weight": "0.5"}, "default_weight"),
    (lambda m: {**m, "default_weight": True}, "default_weight"),
    (lambda m: {**m, "tensors": {"w": {"shape": [2, 2]}}}, "storage"),
    (lambda m: {**m, "tensors": {"w": {"shape": "2x2", "storage": "dense"}}}, "shape"),
    (lambda m: {**m, "tensors": {"w": {"shape": [4], "storage": "dense"}}}, "stored with shape [2, 2]"),
    (lambda m: {**m, "tensors": {"w": {"shape": [2, 2], "storage": "factored"}}}, "'w::B'"),
    (lambda m: {**m, "tensors": {}}, "tensors"),
    (lambda m: {**m, "architecture": ["Llama"]}, "architecture"),
    (lambda m: {**m, "sources": "x"}, "sources"),
])
def test_tampered_capvector_json(tmp_path, edit, fragment):
    base = write_st(tmp_path / "base", {"w": torch.zeros(2, 2)})
    vec = _vector(tmp_path, {"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)})
    (vec / "capvector.json").write_text(json.dumps(edit(_meta(vec))))
    r = run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--no-hash")
    assert_user_error(r, "capvector" if "stored" not in fragment and "::B" not in fragment else "v", fragment)
    assert_user_error(run_cli("inspect", vec), fragment)
    assert leftovers(tmp_path / "m") == []


def _lora_vector(tmp, ranks=(2, 3)):
    """A factored vector written by hand: B m×r_b, A r_a×n."""
    from safetensors.torch import save_file

    vec = tmp / "lv"
    vec.mkdir()
    save_file({"w.weight::B": torch.ones(4, ranks[0]), "w.weight::A": torch.ones(ranks[1], 5)},
              vec / "vector.safetensors")
    meta = {"format": "capvector.vector", "format_version": 1,
            "tensors": {"w.weight": {"shape": [4, 5], "storage": "factored"}}}
    (vec / "capvector.json").write_text(json.dumps(meta))
    return vec


def test_factored_rank_mismatch_is_an_error(tmp_path):
    vec = _lora_vector(tmp_path)
    base = write_st(tmp_path / "base", {"w.weight": torch.zeros(4, 5)})
    assert_user_error(run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--no-hash"),
                      "B [4, 2] and A [3, 5]")
    assert_user_error(run_cli("export-lora", vec, "-o", tmp_path / "peft"), "same rank")
    assert leftovers(tmp_path / "m") == [] and leftovers(tmp_path / "peft") == []


def test_factored_vector_exports_when_consistent(tmp_path):
    vec = _lora_vector(tmp_path, ranks=(3, 3))
    r = run_cli("export-lora", vec, "-o", tmp_path / "peft")
    assert r.code == 0, r.stderr


def _adapter(path, config: dict, rank: int = 2):
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({"base_model.model.l.lora_A.weight": torch.ones(rank, 4),
               "base_model.model.l.lora_B.weight": torch.ones(3, rank)}, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 4, **config}))
    return path


@pytest.mark.parametrize(("config", "fragment"), [
    ({"lora_alpha": "16"}, "lora_alpha"),
    ({"lora_alpha": None}, "lora_alpha"),
    ({"r": 4}, "r = 4"),
    ({"r": "2"}, "r is '2'"),
    ({"rank_pattern": {"l": 8}}, "r = 8"),
    ({"alpha_pattern": {"(": 1}}, "regular expression"),
    ({"use_rslora": "yes"}, "use_rslora"),
])
def test_bad_adapter_config(tmp_path, config, fragment):
    sft = _adapter(tmp_path / "sft", config)
    aux = _adapter(tmp_path / "aux", {})
    assert_user_error(run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash"),
                      "adapter", fragment)
    assert leftovers(tmp_path / "v") == []


def test_adapter_with_zero_rank(tmp_path):
    sft = _adapter(tmp_path / "sft", {"r": 1}, rank=0)
    aux = _adapter(tmp_path / "aux", {})
    assert_user_error(run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash"), "same rank")


@pytest.mark.parametrize("content", ["[1, 2]", '"x"', '{"weight_map": {"w": 3}}', '{"weight_map": []}'])
def test_bad_index_json(tmp_path, content):
    d = write_st(tmp_path / "x", {"w": torch.ones(2)})
    (d / "model.safetensors.index.json").write_text(content)
    assert_user_error(run_cli("inspect", d), "index")


@pytest.mark.parametrize("content", ["[1, 2]", '"x"', "3"])
def test_config_json_that_is_not_an_object(tmp_path, content):
    base = write_st(tmp_path / "base", {"w": torch.zeros(2)})
    (base / "config.json").write_text(content)
    vec = _vector(tmp_path, {"w": torch.zeros(2)}, {"w": torch.ones(2)})
    assert_user_error(run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--no-hash"),
                      "config.json")


# ---------------------------------------------------------------- 2. permissions follow the umask
def _modes(root):
    return {p.relative_to(root).as_posix() or ".": oct(p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_umask_permissions(tmp_path, umask):
    from capvector.io.atomic import atomic_save_safetensors, atomic_write_json, atomic_write_text

    base = write_st(tmp_path / "base", {"w": torch.zeros(2, 2)})
    old = os.umask(umask)
    try:
        vec = _vector(tmp_path, {"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)})
        assert run_cli("merge", "--base", base, "--vector", vec, "-o", tmp_path / "m", "--no-hash").code == 0
        atomic_write_text(tmp_path / "report.md", "x")
        atomic_write_json(tmp_path / "sub" / "results.json", {})
        atomic_save_safetensors({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    d, f = oct(0o777 & ~umask), oct(0o666 & ~umask)
    for root in (vec, tmp_path / "m"):
        modes = _modes(root)
        assert modes["."] == d and set(modes.values()) == {d, f}, modes
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "report.md", tmp_path / "sub" / "results.json",
                                                    tmp_path / "w.safetensors")} == {f}
    assert oct((tmp_path / "sub").stat().st_mode & 0o777) == d


def test_no_tempfile_or_hand_written_renames_left_in_the_package():
    """One atomic-write helper: every rename of a temporary into place goes through capvector.io.atomic."""
    import re
    from pathlib import Path

    import capvector

    root = Path(capvector.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "atomic.py"
                 and re.search(r"mkstemp|mkdtemp|os\.replace|os\.rename|\.replace\(tmp|\.rename\(", p.read_text())]
    assert offenders == []


# ---------------------------------------------------------------- 3. file-system errors are one-line errors
@pytest.fixture
def pair(tmp_path):
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(64, 64)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(64, 64)})
    return sft, aux, tmp_path


def test_output_parent_is_a_file(pair):
    sft, aux, tmp = pair
    (tmp / "afile").write_text("x")
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "afile" / "sub" / "v", "--no-hash")
    assert_user_error(r, "afile", "is a file")
    assert (tmp / "afile").read_text() == "x"


@pytest.mark.parametrize("error", [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")])
def test_read_only_output_parent(pair, monkeypatch, error):
    """As root a chmod cannot make a folder read-only, so the kernel's answer is simulated."""
    import capvector.io.atomic as atomic

    def refuse(*args, **kwargs):
        raise OSError(*error)

    sft, aux, tmp = pair
    monkeypatch.setattr(atomic.os, "mkdir", refuse)
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "v", "--no-hash")
    assert_user_error(r, str(tmp), error[1])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_parent_for_real(pair):
    sft, aux, tmp = pair
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "ro" / "v", "--no-hash")
    assert_user_error(r, "Permission denied")


@pytest.mark.parametrize("plot", ["missing/plot.png", "plot.txt", "plot", "."])
def test_bad_plot_paths(pair, plot):
    sft, aux, tmp = pair
    vec = tmp / "v"
    assert run_cli("extract", "--sft", sft, "--aux", aux, "-o", vec, "--no-hash").code == 0
    r = run_cli("inspect", vec, "--plot", tmp / plot)
    assert_user_error(r, "plot")
    assert not (tmp / "missing").exists() and not (tmp / "plot.txt").exists()


def test_plot_with_other_image_suffixes(pair):
    sft, aux, tmp = pair
    assert run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp / "v", "--no-hash").code == 0
    assert run_cli("inspect", tmp / "v", "--plot", tmp / "p.svg").code == 0
    assert (tmp / "p.svg").read_text().lstrip().startswith("<?xml")
    assert leftovers(tmp / "p.svg") == ["p.svg"]


def test_disk_full_is_a_one_line_error(pair):
    """RLIMIT_FSIZE makes writes past 100 kB fail with EFBIG, as a full disk fails with ENOSPC."""
    import resource

    sft, aux, tmp = pair
    sft2 = write_st(tmp / "sft2", {"w": torch.zeros(256, 256)})
    aux2 = write_st(tmp / "aux2", {"w": torch.ones(256, 256)})
    limit = 100_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-m", "capvector.cli", "extract", "--sft", str(sft2), "--aux", str(aux2),
                        "-o", str(tmp / "v"), "--no-hash"], capture_output=True, text=True, timeout=120,
                       preexec_fn=small_files)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "File too large" in lines[0], r.stderr
    assert leftovers(tmp / "v") == []


# ---------------------------------------------------------------- 7. interrupted runs leave no litter
CLI = [sys.executable, "-m", "capvector.cli"]


@pytest.fixture(scope="module")
def big_merge(tmp_path_factory):
    """A base and a zero vector of ~100 MB each: a merge takes long enough to be interrupted mid-write."""
    from safetensors.torch import save_file

    from capvector import extract

    root = tmp_path_factory.mktemp("big")
    gen = torch.Generator().manual_seed(0)
    (root / "base").mkdir()
    save_file({f"layer{i}.weight": torch.randn(1024, 1024, generator=gen) for i in range(24)},
              root / "base" / "model.safetensors")
    (root / "s").mkdir()
    os.link(root / "base" / "model.safetensors", root / "s" / "model.safetensors")
    extract(root / "s", root / "base", root / "v", progress=False, hash_sources=False)
    return root


def _start_merge(root, out):
    proc = subprocess.Popen([*CLI, "merge", "--base", str(root / "base"), "--vector", str(root / "v"), "-o",
                             str(out), "--no-hash"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(f".{out.name}.partial-") for p in out.parent.iterdir()):
        time.sleep(0.005)
    return proc


def test_sigterm_cleans_up_and_exits_143(big_merge, tmp_path):
    out = tmp_path / "m"
    proc = _start_merge(big_merge, out)
    assert [p for p in tmp_path.iterdir() if ".partial-" in p.name], "merge finished before the signal"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["error: terminated (SIGTERM); partial output removed"]
    assert leftovers(out) == []


def test_stale_partial_of_a_killed_run_is_removed_by_the_next_run(big_merge, tmp_path):
    out = tmp_path / "m"
    proc = _start_merge(big_merge, out)
    proc.kill()
    proc.communicate()
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.partial-")]
    assert stale and f".m.partial-{proc.pid}-" in stale[0]
    (tmp_path / ".other.partial-1-0123abcd").mkdir()  # another target's: not ours to remove
    r = run_cli("merge", "--base", big_merge / "base", "--vector", big_merge / "v", "-o", out, "--no-hash")
    assert r.code == 0, r.stderr
    assert stale[0] in r.stderr and f"process {proc.pid}" in r.stderr
    assert leftovers(out) == ["m"] and (tmp_path / ".other.partial-1-0123abcd").exists()


def test_partial_of_a_live_process_is_left_alone(tmp_path):
    live = tmp_path / f".v.partial-{os.getppid()}-0123abcd"
    live.mkdir()
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2)})
    assert run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash").code == 0
    assert live.exists()


def test_overwrite_onto_a_file_leaves_no_old_copy(tmp_path):
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2)})
    (tmp_path / "v").write_text("an old file")
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash", "--overwrite")
    assert r.code == 0, r.stderr
    assert leftovers(tmp_path / "v") == ["v"] and (tmp_path / "v" / "capvector.json").is_file()


# ---------------------------------------------------------------- 8. merge copies model files, not training clutter
PROCESSOR = "policy_preprocessor_step_3_normalizer_processor.safetensors"


def test_merge_skips_training_state_and_writes_its_own_card(tmp_path):
    from huggingface_hub import ModelCard
    from safetensors.torch import save_file

    base = write_st(tmp_path / "base", {"w": torch.zeros(2, 2)})
    model_files = {"config.json": '{"architectures": null}', "generation_config.json": "{}", "tokenizer.json": "{}",
                   "tokenizer_config.json": "{}", "chat_template.jinja": "{{ x }}", "preprocessor_config.json": "{}",
                   "modeling_custom.py": "# remote code", "sub/extra.json": "{}"}
    clutter = {"optimizer.pt": "x", "scheduler.pt": "x", "rng_state_0.pth": "x", "trainer_state.json": "{}",
               "training_args.bin": "x", "runs/Jan01/events.out.tfevents.1.host": "x",
               "checkpoint-500/config.json": "{}"}
    for rel, text in {**model_files, **clutter}.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# The base model card\n")
    save_file({"observation.state.mean": torch.ones(3)}, base / PROCESSOR)
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2, 2)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2, 2)})
    assert run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash",
               "--base-model", "org/base-7b").code == 0
    r = run_cli("merge", "--base", base, "--vector", tmp_path / "v", "-o", tmp_path / "m", "--no-hash", "--json")
    assert r.code == 0, r.stderr
    out = tmp_path / "m"
    for rel, text in model_files.items():
        assert (out / rel).read_text() == text, rel
    assert (out / PROCESSOR).read_bytes() == (base / PROCESSOR).read_bytes()
    for rel in clutter:
        assert not (out / rel).exists(), rel
    assert not (out / "runs").exists() and not (out / "checkpoint-500").exists()
    assert set(json.loads(r.stdout)["skipped_base_files"]) == {*clutter, "README.md"}
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == "org/base-7b" and meta["base_model_relation"] == "merge" and meta["license"] == "mit"
    assert "The base model card" not in card.text and "| `v` | 1 |" in card.text


# ---------------------------------------------------------------- 9. dtypes and layouts of real checkpoints
@pytest.mark.parametrize(("name", "dtype"), [
    ("F8_E8M0", torch.float8_e8m0fnu), ("F8_E4M3FNUZ", torch.float8_e4m3fnuz), ("F8_E5M2FNUZ", torch.float8_e5m2fnuz),
    ("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)])
def test_every_float8_dtype_extracts_and_merges(tmp_path, name, dtype):
    values = {"sft": torch.tensor([0.5, 1.0, 2.0, 4.0]), "aux": torch.tensor([1.0, 1.0, 8.0, 0.25])}
    stored = {}
    for role, v in values.items():
        t = v.to(dtype)
        stored[role] = t.float()
        header = {"w": {"dtype": name, "shape": [4], "data_offsets": [0, 4]}}
        raw_safetensors(tmp_path / role / "model.safetensors", header, t.view(torch.uint8).numpy().tobytes())
    r = run_cli("extract", "--sft", tmp_path / "sft", "--aux", tmp_path / "aux", "-o", tmp_path / "v", "--no-hash")
    assert r.code == 0, r.stderr
    tau = load_file(tmp_path / "v" / "vector.safetensors")["w"]
    assert torch.equal(tau, stored["aux"] - stored["sft"])
    r = run_cli("merge", "--base", tmp_path / "sft", "--vector", tmp_path / "v", "-o", tmp_path / "m", "--no-hash",
            "--weight", "0.0", "--allow-missing")
    assert r.code == 0, r.stderr
    merged = (tmp_path / "m" / "model.safetensors").read_bytes()[-4:]
    assert merged == (tmp_path / "sft" / "model.safetensors").read_bytes()[-4:]


def test_complex_tensors_are_read_and_refused_in_arithmetic(tmp_path):
    c = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2), "freqs": c})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2), "freqs": c})
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["skipped"] == {"non_float_equal": 1}
    aux2 = write_st(tmp_path / "aux2", {"w": torch.ones(2), "freqs": c * 2})
    r = run_cli("extract", "--sft", sft, "--aux", aux2, "-o", tmp_path / "v2", "--no-hash")
    assert_user_error(r, "'freqs'", "complex64")


def test_lerobot_processor_state_is_never_read_as_weights(tmp_path):
    from safetensors.torch import save_file

    sft = write_st(tmp_path / "sft", {"model.w": torch.zeros(2)})
    aux = write_st(tmp_path / "aux", {"model.w": torch.ones(2)})
    for d, mean in ((sft, 0.0), (aux, 5.0)):
        save_file({"observation.state.mean": torch.full((3,), mean)}, d / PROCESSOR)
        post = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
        save_file({"action.std": torch.full((3,), mean)}, d / post)
    r = run_cli("extract", "--sft", sft, "--aux", aux, "-o", tmp_path / "v", "--no-hash")
    assert r.code == 0, r.stderr
    assert set(load_file(tmp_path / "v" / "vector.safetensors")) == {"model.w"}
    r = run_cli("inspect", sft, "--json")
    assert [t["name"] for t in json.loads(r.stdout)["tensors"]] == ["model.w"]


# ---------------------------------------------------------------- 10. inspect details
def test_inspect_base_of_other_shapes_is_an_error(tmp_path):
    vec = _vector(tmp_path, {"w": torch.zeros(4, 4), "b": torch.zeros(4)}, {"w": torch.ones(4, 4), "b": torch.ones(4)})
    other = write_st(tmp_path / "other", {"w": torch.ones(8, 4), "b": torch.ones(4)})
    assert_user_error(run_cli("inspect", vec, "--base", other), "'w'", "[8, 4]", "[4, 4]")
    assert_user_error(run_cli("inspect", vec, "--other", other), "'w'")


def test_inspect_negative_top(tmp_path):
    vec = _vector(tmp_path, {"w": torch.zeros(2)}, {"w": torch.ones(2)})
    assert_user_error(run_cli("inspect", vec, "--top", "-5"), "--top", "-5")
    r = run_cli("inspect", vec, "--top", "0", "--json")
    assert r.code == 0 and json.loads(r.stdout)["largest"] == []


@pytest.mark.parametrize("out", ["", "."])
def test_empty_output_path(tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sft = write_st(tmp_path / "sft", {"w": torch.zeros(2)})
    aux = write_st(tmp_path / "aux", {"w": torch.ones(2)})
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(run_cli("extract", "--sft", sft, "--aux", aux, "-o", out, "--no-hash", "--overwrite"),
                      "names no new directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
