"""Provenance hashes computed from the arithmetic's own reads, against hashlib over the whole files."""

from __future__ import annotations

import hashlib
import json
import random
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_core_lora import make_adapter

from capvector import extract, merge
from capvector.io import hashing
from capvector.io.hashing import StreamHasher
from testing_common import tiny_llama


def direct_digest(root, files) -> str:
    """The documented provenance digest, from hashlib over each whole file (independent of capvector)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).hexdigest().encode() + b"\n")
    return "sha256:" + h.hexdigest()


def weights(root) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.endswith(".safetensors")]


@pytest.fixture
def no_second_read(monkeypatch):
    """Reading a safetensors input a second time for its hash (the old way) fails the test."""
    def refuse(path):
        raise AssertionError(f"{path} was read again just to hash it")
    monkeypatch.setattr(hashing, "file_sha256", refuse)


def test_extract_hashes_equal_sha256_of_the_files(llama_trio, tmp_path, no_second_read):
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", pretrained=llama_trio["pre"], progress=False)
    sources = json.loads((tmp_path / "v" / "capvector.json").read_text())["sources"]
    for role in ("sft", "aux", "pretrained"):
        root = llama_trio["pre" if role == "pretrained" else role]
        assert sources[role]["hash"] == direct_digest(root, weights(root))


def test_hashes_cover_skipped_tensors_and_other_layouts(llama_trio, tmp_path, no_second_read):
    """A selection reads a few tensors; an sft saved in another order and sharding is read out of file order."""
    sft = tmp_path / "sft"
    state = {k: v for f in weights(llama_trio["sft"]) for k, v in load_file(llama_trio["sft"] / f).items()}
    sft.mkdir()
    names = sorted(state, reverse=True)
    save_file({k: state[k] for k in names[: len(names) // 2]}, sft / "a.safetensors")
    save_file({k: state[k] for k in names[len(names) // 2:]}, sft / "b.safetensors")
    extract(sft, llama_trio["aux"], tmp_path / "v", include=["*.layers.1.*q_proj*"], progress=False)
    meta = json.loads((tmp_path / "v" / "capvector.json").read_text())
    assert len(meta["tensors"]) == 1
    assert meta["sources"]["sft"]["hash"] == direct_digest(sft, ["a.safetensors", "b.safetensors"])
    assert meta["sources"]["aux"]["hash"] == direct_digest(llama_trio["aux"], weights(llama_trio["aux"]))


def test_lora_adapter_hashes(tmp_path, no_second_read):
    make_adapter(tmp_path / "sft", seed=1, r=2)
    make_adapter(tmp_path / "aux", seed=2, r=3)
    extract(tmp_path / "sft", tmp_path / "aux", tmp_path / "v", progress=False)
    sources = json.loads((tmp_path / "v" / "capvector.json").read_text())["sources"]
    for role in ("sft", "aux"):
        assert sources[role]["hash"] == direct_digest(tmp_path / role, ["adapter_model.safetensors"])


def test_merge_base_hash(llama_trio, tmp_path, no_second_read):
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", progress=False, hash_sources=False)
    recipe = merge(llama_trio["pre"], [tmp_path / "v"], tmp_path / "m", progress=False)
    assert recipe["base"]["hash"] == direct_digest(llama_trio["pre"], weights(llama_trio["pre"]))


def test_pickle_inputs_are_hashed_whole(tmp_path):
    model = tiny_llama(0)
    for role in ("sft", "aux"):
        (tmp_path / role).mkdir()
        torch.save(model.state_dict(), tmp_path / role / "pytorch_model.bin")
    extract(tmp_path / "sft", tmp_path / "aux", tmp_path / "v", progress=False)
    sources = json.loads((tmp_path / "v" / "capvector.json").read_text())["sources"]
    assert sources["sft"]["hash"] == direct_digest(tmp_path / "sft", ["pytorch_model.bin"])


@pytest.mark.parametrize("seed", range(5))
def test_stream_hasher_in_any_order_equals_sha256(tmp_path, seed):
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(5000))
    path = tmp_path / "f"
    path.write_bytes(data)
    cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(12))})
    ranges = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if rng.random() < 0.7]  # gaps
    ranges += [(a, min(len(data), a + rng.randrange(1, 900))) for a in (rng.randrange(len(data)) for _ in range(4))]
    rng.shuffle(ranges)  # out of order, overlapping
    hasher = StreamHasher(path)
    for a, b in ranges:
        hasher.feed(a, torch.frombuffer(bytearray(data[a:b]), dtype=torch.uint8))
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_files_digest_reading_whole_files_agrees(llama_trio):
    """`files_digest` (whole files read again, as benchmarks/merge.py times it) gives the same value."""
    root = llama_trio["pre"]
    assert hashing.files_digest(root, weights(root)) == direct_digest(root, weights(root))


def test_buffers_are_reused_only_after_they_are_hashed(llama_trio, tmp_path, monkeypatch):
    """A slow hash must not see a pooled read buffer that the reader has already refilled."""
    feed = StreamHasher.feed

    def slow_feed(self, offset, data):
        time.sleep(0.002)
        feed(self, offset, data)

    monkeypatch.setattr(StreamHasher, "feed", slow_feed)
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", progress=False)
    sources = json.loads((tmp_path / "v" / "capvector.json").read_text())["sources"]
    assert sources["aux"]["hash"] == direct_digest(llama_trio["aux"], weights(llama_trio["aux"]))
