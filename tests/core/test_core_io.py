"""Checkpoint reading/writing against the official safetensors and torch readers."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from capvector.errors import CapvectorError
from capvector.io import Checkpoint, ShardedWriter, parse_size, plan_resharded
from capvector.io.safetensors_format import StreamingSafetensorsWriter


def test_streaming_writer_is_read_back_by_safetensors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(5, 7, generator=gen),
        "b": torch.randn(3, generator=gen).to(torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "c": torch.arange(10, dtype=torch.int64),
    }
    path = tmp_path / "x.safetensors"
    w = StreamingSafetensorsWriter(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], {"k": "v"})
    w.write("a", tensors["a"].reshape(-1)[:20])
    w.write("a", tensors["a"].reshape(-1)[20:])
    w.write("b", tensors["b"])
    w.write("c", tensors["c"])
    w.close()
    back = load_file(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_writer_rejects_out_of_order_and_incomplete(tmp_path):
    w = StreamingSafetensorsWriter(tmp_path / "y.safetensors", [("a", torch.float32, (2,)), ("b", torch.float32, (2,))])
    with pytest.raises(RuntimeError, match="out of order"):
        w.write("b", torch.zeros(2))
    w.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="before 'b'"):
        w.close()


def test_sharded_equals_single_file(llama_trio, tmp_path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(llama_trio["pre"])
    model.save_pretrained(tmp_path / "single", max_shard_size="100MB")
    sharded, single = Checkpoint(llama_trio["pre"]), Checkpoint(tmp_path / "single")
    assert sharded.kind == "sharded-safetensors" and len(sharded.weight_files) > 1
    assert single.kind == "safetensors" and single.weight_files == ["model.safetensors"]
    assert sorted(sharded.keys()) == sorted(single.keys())
    for name in single.keys():
        assert torch.equal(sharded.read(name), single.read(name))
    state = model.state_dict()
    assert torch.equal(single.read("model.layers.0.mlp.up_proj.weight"), state["model.layers.0.mlp.up_proj.weight"])


def test_chunked_reads_match_whole_tensor(llama_trio):
    ckpt = Checkpoint(llama_trio["pre"])
    name = "model.embed_tokens.weight"
    whole = ckpt.read(name).reshape(-1)
    parts = [ckpt.read_flat(name, s, min(100, whole.numel() - s)) for s in range(0, whole.numel(), 100)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="outside"):
        ckpt.read_flat(name, whole.numel() - 10, 100)


def test_pickle_checkpoints_load_with_weights_only(tmp_path):
    tensors = {"w": torch.randn(4, 3), "b": torch.randn(3).half()}
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    ckpt = Checkpoint(tmp_path)
    assert ckpt.kind == "pickle"
    for k, v in tensors.items():
        assert torch.equal(ckpt.read(k), v)


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": tmp_path}, tmp_path / "bad.pt")  # a PosixPath: not allow-listed
    with pytest.raises(CapvectorError, match="weights_only"):
        Checkpoint(tmp_path / "bad.pt")


def test_hf_snapshot_with_symlinked_blobs(llama_trio, tmp_path):
    """A hub cache snapshot holds symlinks into ../../blobs; that is not 'outside the directory'."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in llama_trio["pre"].iterdir():
        (blobs / f.name).write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blobs / f.name, snap), snap / f.name)
    ckpt = Checkpoint(snap)
    ref = Checkpoint(llama_trio["pre"])
    assert ckpt.keys() == ref.keys()
    assert torch.equal(ckpt.read("lm_head.weight"), ref.read("lm_head.weight"))
    assert {p.name for p in ckpt.non_weight_files()} >= {"config.json", "generation_config.json"}


def test_corrupted_and_truncated_headers(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64)}, good)
    raw = good.read_bytes()
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CapvectorError, match=r"trunc.*(truncated|do not fit)"):
        Checkpoint(tmp_path / "trunc")
    (tmp_path / "badjson").mkdir()
    n = struct.unpack("<Q", raw[:8])[0]
    (tmp_path / "badjson" / "model.safetensors").write_bytes(raw[:8] + b"{" * n + raw[8 + n :])
    with pytest.raises(CapvectorError, match="invalid JSON"):
        Checkpoint(tmp_path / "badjson")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CapvectorError, match="not a safetensors file"):
        Checkpoint(tmp_path / "tiny")
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CapvectorError, match="corrupted or truncated"):
        Checkpoint(tmp_path / "huge")


def test_index_naming_file_outside_directory(llama_trio, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(llama_trio["pre"], d)
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CapvectorError, match=rf"{key}.*outside the checkpoint directory"):
        Checkpoint(d)
    index["weight_map"][key] = "missing.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CapvectorError, match="missing file"):
        Checkpoint(d)


def test_resharding_plan_and_index(tmp_path):
    specs = [(f"t{i}", torch.float32, (100,)) for i in range(10)]  # 400 bytes each
    plan = plan_resharded(specs, 1000, stem="model")
    assert [len(v) for v in plan.shards.values()] == [2, 2, 2, 2, 2]
    writer = ShardedWriter(tmp_path, plan)
    for i in range(10):
        writer.write(f"t{i}", torch.full((100,), float(i)))
    writer.close()
    ckpt = Checkpoint(tmp_path)
    assert ckpt.kind == "sharded-safetensors"
    assert all(torch.equal(ckpt.read(f"t{i}"), torch.full((100,), float(i))) for i in range(10))
    assert json.loads((tmp_path / plan.index_name).read_text())["metadata"]["total_size"] == 4000


@pytest.mark.parametrize(("text", "value"), [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("2000", 2000),
                                             ("1.5KB", 1500)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_garbage():
    with pytest.raises(CapvectorError, match="invalid size"):
        parse_size("lots")


def test_prefetcher_order_errors_and_early_exit():
    from capvector.io import BufferPool
    from capvector.io.prefetch import Prefetcher

    pool = BufferPool(8, count=4)

    def load(job):
        if job == 7:
            raise OSError("disk on fire")
        return pool.acquire(), job * job

    def discard(result):
        pool.release(result[0])

    seen = []
    for job, (buf, sq) in Prefetcher(range(5), load, discard):
        seen.append((job, sq))
        pool.release(buf)
    assert seen == [(j, j * j) for j in range(5)]
    with pytest.raises(OSError, match="disk on fire"):
        for _, (buf, _) in Prefetcher(range(10), load, discard):
            pool.release(buf)
    with pytest.raises(RuntimeError, match="consumer failed"):  # while the reader is blocked on the pool
        for _, (buf, _) in Prefetcher(range(100), load, discard, depth=2):
            pool.release(buf)
            raise RuntimeError("consumer failed")
    assert pool.free == 4  # every buffer came back: no leak, no deadlock
