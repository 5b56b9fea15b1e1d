"""Property-based fuzzing of the checkpoint tools with generated and mutated inputs (issue 17).

The property, for every generated input: a CLI call either succeeds with finite output that agrees with
an independent reading (the official `safetensors` library, arithmetic done here), or exits 2 with one
`error:` line on stderr; it never leaves anything at or beside the output path on failure, and never
modifies an input. Inputs are valid files and mutations of them: truncation, flipped bytes, random
bytes, a header field replaced by any JSON value, overlapping offsets, huge shapes, tampered index,
capvector.json and adapter_config.json.

The default profile ("ci") runs a few hundred examples in total; `CAPVECTOR_FUZZ=long` runs many more
(`CAPVECTOR_FUZZ=long pytest tests/core/test_core_fuzz.py`).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hostile import tree_digest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from testing_common import run_cli

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("CAPVECTOR_FUZZ", "ci"))

DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}
NAMES = st.sampled_from(["w", "b", "layers.0.w", "layers.1.w", "emb"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


# ---------------------------------------------------------------- generated safetensors files
@st.composite
def tensors(draw) -> dict[str, tuple[str, list[int], list[float]]]:
    """name -> (dtype, shape, values), values finite and moderate so any result is exactly checkable."""
    out = {}
    for name in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
        n = math.prod(shape)
        values = draw(st.lists(st.floats(-100, 100, width=16), min_size=n, max_size=n))
        out[name] = (dtype, shape, values)
    return out


def encode(spec: dict[str, tuple[str, list[int], list[float]]]) -> tuple[dict, bytes]:
    header, data = {}, b""
    for name, (dtype, shape, values) in spec.items():
        raw = torch.tensor(values, dtype=torch.float32).to(DTYPES[dtype][0]).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data


def frame(header: object, data: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@st.composite
def mutated_file(draw) -> bytes:
    """A safetensors file: valid, or with one of the mutations a corrupted or crafted file shows."""
    header, data = encode(draw(tensors()))
    kind = draw(st.sampled_from(["valid", "field", "overlap", "huge", "metadata", "length", "truncate", "flip",
                                 "garbage", "drop", "extra"]))
    names = list(header)
    name = draw(st.sampled_from(names))
    if kind == "field":
        header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(JSON)
    elif kind == "overlap" and len(names) > 1:
        header[names[1]]["data_offsets"] = list(header[names[0]]["data_offsets"])
    elif kind == "huge":
        header[name]["shape"] = [2**40, 2**40]
        header[name]["data_offsets"] = [0, 2**82]
    elif kind == "metadata":
        header["__metadata__"] = draw(JSON)
    elif kind == "drop":
        del header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif kind == "extra":
        header[draw(st.text(max_size=4))] = draw(JSON)
    blob = frame(header, data)
    if kind == "length":
        blob = frame(header, data, draw(st.integers(0, 2**64 - 1)))
    elif kind == "truncate":
        blob = blob[: draw(st.integers(0, max(len(blob) - 1, 0)))]
    elif kind == "flip":
        b = bytearray(blob)
        for pos in draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=4)):
            b[pos] ^= draw(st.integers(1, 255))
        blob = bytes(b)
    elif kind == "garbage":
        blob = draw(st.binary(max_size=64))
    return blob


# ---------------------------------------------------------------- the property
def check_failure_contract(r, out: Path) -> None:
    assert r.code in (0, 2), (r.code, r.stdout, r.stderr)
    event(f"exit {r.code}" + (f": {r.stderr.split(':')[1].strip()[:25] if ':' in r.stderr else ''}" if r.code else ""))
    if r.code == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert not out.exists(), "an output was left after an error"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == [], leftovers


def official(path: Path) -> dict[str, torch.Tensor] | None:
    """What the official library reads from a safetensors file, or None when it refuses it."""
    try:
        return {k: v.float() for k, v in load_file(path).items()}
    except Exception:  # noqa: BLE001 - any refusal
        return None


def official_dir(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return {k: v.float() for k, v in out.items()}


def _write(d: Path, blob: bytes) -> Path:
    d.mkdir()
    (d / "model.safetensors").write_bytes(blob)
    return d


@given(blob=mutated_file())
def test_fuzz_inspect_safetensors(blob):
    with tempfile.TemporaryDirectory() as t:
        ckpt = _write(Path(t) / "c", blob)
        before = tree_digest(ckpt)
        r = run_cli("inspect", ckpt, "--json")
        check_failure_contract(r, Path(t) / "none")
        assert tree_digest(ckpt) == before
        if r.code == 0:
            ref = official(ckpt / "model.safetensors")
            assert ref is not None, "we read a file the official library refuses"
            got = {row["name"]: row["norm"] for row in json.loads(r.stdout)["tensors"]}
            want = {k: float(v.double().norm()) for k, v in ref.items() if v.is_floating_point()}
            assert got.keys() == want.keys()
            for k in got:
                assert math.isfinite(got[k]) and got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


@given(sft=mutated_file(), aux=mutated_file(), dtype=st.sampled_from(["fp32", "bf16", "fp16"]))
def test_fuzz_extract_then_merge(sft, aux, dtype):
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        s, a = _write(root / "sft", sft), _write(root / "aux", aux)
        before = tree_digest(s, a)
        out = root / "v"
        r = run_cli("extract", "--sft", s, "--aux", a, "-o", out, "--no-hash", "--allow-missing", "--dtype", dtype)
        check_failure_contract(r, out)
        assert tree_digest(s, a) == before
        if r.code != 0:
            return
        ref_s, ref_a = official(s / "model.safetensors"), official(a / "model.safetensors")
        assert ref_s is not None and ref_a is not None, "we read a file the official library refuses"
        tau = official_dir(out)
        for k, v in tau.items():
            want = (ref_a[k] - ref_s[k]).to({"fp32": torch.float32, "bf16": torch.bfloat16,
                                              "fp16": torch.float16}[dtype]).float()
            assert torch.isfinite(v).all() and torch.equal(v, want), k
        # merging the vector back into sft gives aux (in sft's dtype) wherever τ exists
        m = root / "m"
        before = tree_digest(s, out)
        r = run_cli("merge", "--base", s, "--vector", out, "-o", m, "--no-hash")
        check_failure_contract(r, m)
        assert tree_digest(s, out) == before
        if r.code == 0:
            merged = official_dir(m)
            for k, v in merged.items():
                assert torch.isfinite(v).all(), k
                if k not in tau:
                    assert torch.equal(v, ref_s[k]), k


# ---------------------------------------------------------------- tampered JSON around valid weights
@pytest.fixture(scope="module")
def valid_vector(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzzvec")
    save_file({"w": torch.zeros(3, 2), "b": torch.zeros(2)}, _dir(root / "sft") / "model.safetensors")
    save_file({"w": torch.ones(3, 2), "b": torch.ones(2)}, _dir(root / "aux") / "model.safetensors")
    save_file({"w": torch.zeros(3, 2), "b": torch.zeros(2)}, _dir(root / "base") / "model.safetensors")
    assert run_cli("extract", "--sft", root / "sft", "--aux", root / "aux", "-o", root / "v", "--no-hash").code == 0
    return root


def _dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _tamper(obj: object, path: list, value: object) -> object:
    """`obj` with the item at `path` (keys/indices, as far as they exist) replaced by `value`."""
    if not path or not isinstance(obj, dict | list) or not obj:
        return value
    if isinstance(obj, dict):
        key = path[0] if path[0] in obj else sorted(obj)[hash(str(path[0])) % len(obj)]
        return {**obj, key: _tamper(obj[key], path[1:], value)}
    i = path[0] % len(obj) if isinstance(path[0], int) else 0
    return [*obj[:i], _tamper(obj[i], path[1:], value), *obj[i + 1:]]


KEY_PATHS = st.lists(st.sampled_from(["format", "format_version", "tensors", "w", "b", "shape", "storage",
                                      "default_weight", "architecture", "sources", "dtype", 0, 1]), max_size=3)


@given(path=KEY_PATHS, value=JSON)
def test_fuzz_tampered_capvector_json(valid_vector, path, value):
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        vec = root / "v"
        vec.mkdir()
        for f in (valid_vector / "v").iterdir():
            (vec / f.name).write_bytes(f.read_bytes())
        meta = json.loads((vec / "capvector.json").read_text())
        (vec / "capvector.json").write_text(json.dumps(_tamper(meta, path, value)))
        before = tree_digest(vec, valid_vector / "base")
        for args, out in ((("inspect", vec, "--json"), root / "none"),
                          (("merge", "--base", valid_vector / "base", "--vector", vec, "-o", root / "m", "--no-hash"),
                           root / "m"),
                          (("export-lora", vec, "-o", root / "e"), root / "e")):
            r = run_cli(*args)
            check_failure_contract(r, out)
            if r.code == 0 and args[0] == "merge":
                merged = official_dir(root / "m")
                assert all(torch.isfinite(v).all() for v in merged.values())
        assert tree_digest(vec, valid_vector / "base") == before


ADAPTER_KEYS = st.sampled_from(["r", "lora_alpha", "use_rslora", "fan_in_fan_out", "alpha_pattern", "rank_pattern",
                                "peft_type", "use_dora", "target_modules"])


@given(key=ADAPTER_KEYS, value=JSON, rank=st.integers(0, 3))
def test_fuzz_adapter_config(key, value, rank):
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        for role, scale in (("sft", 1.0), ("aux", 2.0)):
            d = _dir(root / role)
            r = rank if role == "sft" else 2
            save_file({"base_model.model.l.lora_A.weight": torch.full((r, 4), scale),
                       "base_model.model.l.lora_B.weight": torch.full((3, r), 0.5)}, d / "adapter_model.safetensors")
            config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
            if role == "sft":
                config[key] = value
            (d / "adapter_config.json").write_text(json.dumps(config))
        before = tree_digest(root / "sft", root / "aux")
        out = root / "v"
        r = run_cli("extract", "--sft", root / "sft", "--aux", root / "aux", "-o", out, "--no-hash")
        check_failure_contract(r, out)
        assert tree_digest(root / "sft", root / "aux") == before
        if r.code == 0:
            tau = official_dir(out)
            assert all(torch.isfinite(v).all() for v in tau.values())
            assert (tau["l.weight::B"] @ tau["l.weight::A"]).shape == (3, 4)


@given(weight_map=st.dictionaries(st.text(max_size=6), JSON, max_size=3) | JSON)
def test_fuzz_index_file(weight_map):
    with tempfile.TemporaryDirectory() as t:
        d = _dir(Path(t) / "c")
        save_file({"w": torch.ones(2)}, d / "model-00001-of-00001.safetensors")
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        before = tree_digest(d)
        r = run_cli("inspect", d, "--json")
        check_failure_contract(r, Path(t) / "none")
        assert tree_digest(d) == before
        if r.code == 0:
            assert weight_map == {"w": "model-00001-of-00001.safetensors"} or weight_map == {
                "w": "./model-00001-of-00001.safetensors"}
