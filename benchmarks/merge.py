"""Extract/merge throughput and memory vs raw IO and vs mergekit, on synthetic Llama-shaped bf16 checkpoints.

Run: .venv/bin/python benchmarks/merge.py --sizes-gb 1.5 3.2 [--workdir /tmp/cv-bench] [--skip-mergekit]
     [--shard-gb 1.0]

For each size it writes three sharded bf16 checkpoints (θ_pre, θ_sft, θ_aux) with real transformer
shapes, then times, each in its own subprocess (peak RSS from wait4):
  - raw IO: read the bytes extract reads and write the bytes it writes (the floor for any tool);
  - `capvector extract` (τ = aux − sft, fp32) and `capvector merge` (pre + τ, bf16 out);
  - `capvector extract` with source hashes, from plain directories and from Hub ids in a Hugging Face
    cache (the same files as blobs named by their sha256, which provenance reads instead of re-hashing);
  - mergekit `task_arithmetic` (base pre, aux at +1, sft at −1: the same θ_meta in one step),
    installed in a throw-away venv (it is not a dependency of capvector);
  - `capvector merge` and raw IO again with the inputs already in the page cache (warm): a λ sweep
    over one vector reads the same files again, so then the arithmetic, not the disk, is the cost.
Before every other timed run the page cache is flushed and dropped (when run as root), so each run reads
its inputs from disk and its fsync'd outputs reach the disk: the realistic case for multi-GB
checkpoints, and reproducible. Ratios are what the targets are about. The load average is recorded
before and after each size: the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, VOCAB, HEADS, KV_HEADS = 2048, 5632, 32000, 16, 16


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (HIDDEN,),
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "post_attention_layernorm.weight": (HIDDEN,),
        p + "mlp.gate_proj.weight": (INTER, HIDDEN),
        p + "mlp.up_proj.weight": (INTER, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTER),
    }


def model_shapes(size_gb: float) -> dict[str, tuple[int, ...]]:
    per_layer = sum(torch.Size(s).numel() for s in layer_shapes(0).values()) * 2
    outer = 2 * VOCAB * HIDDEN * 2 + HIDDEN * 2
    layers = max(1, round((size_gb * 1e9 - outer) / per_layer))
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        shapes |= layer_shapes(i)
    shapes |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    return shapes


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int, base_seed: int | None,
                     shard_bytes: int = 1_000_000_000) -> None:
    """θ_pre from `seed`; a fine-tune is θ_pre (regenerated from base_seed) plus small seeded noise."""
    path.mkdir(parents=True)
    gen_base = torch.Generator().manual_seed(base_seed if base_seed is not None else seed)
    gen_noise = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen_base) * 0.02
        if base_seed is not None:
            t += torch.randn(shape, generator=gen_noise) * 1e-3
        t = t.to(torch.bfloat16)
        if size + t.nbytes > shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / fname, metadata={"format": "pt"})
        weight_map |= {k: fname for k in shard}
    total = sum(t.nbytes for s in shards for t in s.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    layers = sum(1 for k in shapes if k.endswith("q_proj.weight"))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "torch_dtype": "bfloat16",
        "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
    }))


def drop_page_cache() -> bool:
    """Flush and drop the page cache (root only) so a run reads from disk: reproducible timings."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# Each operation runs in a fresh process that first imports what it needs, then drops the page cache
# and times only the operation (imports from a cold disk would otherwise dominate small runs), and
# prints its seconds. Peak RSS of the whole process comes from GNU time.
PRELUDE = """
import json, os, sys, time
from pathlib import Path
def drop():
    os.sync()
    if os.environ.get("BENCH_WARM"):  # read every input once instead: the page cache holds them
        buf = bytearray(64 << 20)
        for path in os.environ["BENCH_WARM"].split(","):
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        return
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\\n")
    except OSError:
        pass
"""

CAPVECTOR_OP = PRELUDE + """
import capvector
import huggingface_hub  # Hub ids resolve through it; its import is not part of the timed operation
op, args = sys.argv[1], json.loads(sys.argv[2])
drop()
c0 = sum(os.times()[:2])
t0 = time.perf_counter()
if op == "extract":
    capvector.extract(args["sft"], args["aux"], args["out"], overwrite=True, progress=False, hash_sources=args["hash"])
else:
    capvector.merge(args["base"], [args["vector"]], args["out"], overwrite=True, progress=False, hash_sources=False)
print("SECONDS", time.perf_counter() - t0)
print("CPU", sum(os.times()[:2]) - c0)
"""

# The provenance hash alone (what `--no-hash` saves), of a plain directory or of a Hub cache snapshot.
HASH_OP = PRELUDE + """
import huggingface_hub
from capvector.io import Checkpoint
from capvector.io.hashing import files_digest
roots = sys.argv[1].split(",")
drop()
c0 = sum(os.times()[:2])
t0 = time.perf_counter()
for root in roots:
    ckpt = Checkpoint(root)
    files_digest(ckpt.root, ckpt.weight_files)
print("SECONDS", time.perf_counter() - t0)
print("CPU", sum(os.times()[:2]) - c0)
"""

RAW_IO = PRELUDE + """
inputs, out, out_bytes = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
buf = bytearray(64 << 20)
view = memoryview(buf)
drop()
c0 = sum(os.times()[:2])
t0 = time.perf_counter()
with open(out, "wb") as w:
    written = 0
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                if written < out_bytes:
                    k = min(n, out_bytes - written)
                    w.write(view[:k]); written += k
    while written < out_bytes:
        k = min(len(buf), out_bytes - written); w.write(view[:k]); written += k
    w.flush(); os.fsync(w.fileno())
print("SECONDS", time.perf_counter() - t0)
print("CPU", sum(os.times()[:2]) - c0)
"""

MERGEKIT_OP = PRELUDE + """
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
config = MergeConfiguration.model_validate(yaml.safe_load(Path(sys.argv[1]).read_text()))
options = MergeOptions(lazy_unpickle=True, write_model_card=False, copy_tokenizer=False)
drop()
c0 = sum(os.times()[:2])
t0 = time.perf_counter()
run_merge(config, sys.argv[2], options=options)
print("SECONDS", time.perf_counter() - t0)
print("CPU", sum(os.times()[:2]) - c0)
"""


def timed(cmd: list[str], repeats: int = 2, env: dict[str, str] | None = None) -> dict:
    """Best in-process seconds and peak RSS (MiB) over `repeats` runs (GNU time: apt-get install time).

    rusage from wait4 would be wrong here: a forked child starts with its parent's peak RSS. The
    best of several runs filters out noise from other processes on a shared machine.
    """
    runs = [_timed_once(cmd, env or {}) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": best["seconds"], "cpu_seconds": best["cpu_seconds"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "all_seconds": [r["seconds"] for r in runs]}


def _timed_once(cmd: list[str], extra_env: dict[str, str]) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1"} | extra_env
    proc = subprocess.run(["/usr/bin/time", "-f", "BENCH %e %M", *cmd], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-2000:]}")
    seconds = next(float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("SECONDS"))
    cpu = next(float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("CPU"))
    kib = int(proc.stderr.strip().splitlines()[-1].split()[2])
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(kib / 1024, 1)}


def weight_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def as_hub_cache(cache: Path, repo: str, checkpoint: Path) -> None:
    """Hard-link a checkpoint's files into a Hugging Face cache layout, as `hf download` leaves one: blobs
    named by sha256 (LFS files) or git's sha1 (small files), a snapshot of symlinks, refs/main."""
    store = cache / ("models--" + repo.replace("/", "--"))
    snapshot = store / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (store / "blobs").mkdir()
    for f in sorted(checkpoint.iterdir()):
        data = f.read_bytes()
        blob = (hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        os.link(f, store / "blobs" / blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob)
    (store / "refs").mkdir()
    (store / "refs" / "main").write_text("0" * 40)


def ensure_mergekit(venv: Path) -> Path:
    """A throw-away venv with mergekit (not a capvector dependency); returns its python."""
    exe = venv / "bin" / "python"
    if (venv / "bin" / "mergekit-yaml").exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the local CPU build; mergekit must not pull CUDA
    subprocess.run([*pip, "mergekit==0.1.5"], check=True)
    return exe


def bench_size(size_gb: float, work: Path, mergekit_python: Path | None, shard_gb: float = 1.0) -> dict:
    shapes = model_shapes(size_gb)
    root = work / f"{size_gb}gb"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    shard = int(shard_gb * 1e9)
    write_checkpoint(root / "pre", shapes, seed=0, base_seed=None, shard_bytes=shard)
    write_checkpoint(root / "sft", shapes, seed=1, base_seed=0, shard_bytes=shard)
    write_checkpoint(root / "aux", shapes, seed=2, base_seed=0, shard_bytes=shard)
    gen_s = time.perf_counter() - t0
    largest = max(torch.Size(s).numel() for s in shapes.values()) * 2
    res: dict = {"size_gb": round(dir_bytes(root / "pre") / 1e9, 2), "tensors": len(shapes),
                 "shards": len(weight_files(root / "pre")), "load_average_before": os.getloadavg(),
                 "largest_tensor_mib": round(largest / 2**20, 1), "generate_s": round(gen_s, 1)}
    py = sys.executable

    def cv(op: str, **args) -> list[str]:
        return [py, "-c", CAPVECTOR_OP, op, json.dumps({k: str(v) if isinstance(v, Path) else v
                                                        for k, v in args.items()})]

    res["extract"] = timed(cv("extract", sft=root / "sft", aux=root / "aux", out=root / "vec", hash=False))
    res["extract_hashed"] = timed(cv("extract", sft=root / "sft", aux=root / "aux", out=root / "vec", hash=True))
    for role in ("sft", "aux"):
        as_hub_cache(root / "hub", f"bench/{role}", root / role)
    hub = {"HF_HUB_CACHE": str(root / "hub")}
    res["extract_hashed_hub"] = timed(cv("extract", sft="bench/sft", aux="bench/aux", out=root / "vec", hash=True),
                                      env=hub)
    res["hash_sources"] = timed([py, "-c", HASH_OP, f"{root / 'sft'},{root / 'aux'}"])
    res["hash_sources_hub"] = timed([py, "-c", HASH_OP, "bench/sft,bench/aux"], env=hub)
    vec_bytes = dir_bytes(root / "vec")
    files = ",".join(str(p) for p in weight_files(root / "sft") + weight_files(root / "aux"))
    res["raw_extract_io"] = timed([py, "-c", RAW_IO, files, str(root / "raw.bin"), str(vec_bytes)])
    (root / "raw.bin").unlink()
    res["merge"] = timed(cv("merge", base=root / "pre", vector=root / "vec", out=root / "meta"))
    files = ",".join(str(p) for p in weight_files(root / "pre") + weight_files(root / "vec"))
    res["raw_merge_io"] = timed([py, "-c", RAW_IO, files, str(root / "raw.bin"), str(dir_bytes(root / "pre"))])
    (root / "raw.bin").unlink()
    warm = {"BENCH_WARM": files}
    res["merge_warm"] = timed(cv("merge", base=root / "pre", vector=root / "vec", out=root / "meta"), env=warm)
    res["raw_merge_io_warm"] = timed([py, "-c", RAW_IO, files, str(root / "raw.bin"), str(dir_bytes(root / "pre"))],
                                     env=warm)
    (root / "raw.bin").unlink()
    res["io_bytes"] = {"extract_in": dir_bytes(root / "sft") + dir_bytes(root / "aux"), "extract_out": vec_bytes,
                       "merge_in": dir_bytes(root / "pre") + vec_bytes, "merge_out": dir_bytes(root / "meta")}
    if mergekit_python is not None:
        cfg = root / "mergekit.yml"
        cfg.write_text(
            f"merge_method: task_arithmetic\nbase_model: {root / 'pre'}\ndtype: bfloat16\nmodels:\n"
            f"  - model: {root / 'aux'}\n    parameters: {{weight: 1.0}}\n"
            f"  - model: {root / 'sft'}\n    parameters: {{weight: -1.0}}\n")
        res["mergekit"] = timed([str(mergekit_python), "-c", MERGEKIT_OP, str(cfg), str(root / "mk")])
        res["mergekit_vs_capvector_max_abs_diff"] = compare(root / "meta", root / "mk")
    shutil.rmtree(root)
    res["load_average_after"] = os.getloadavg()
    return res


def compare(ours: Path, theirs: Path) -> float:
    """Max |ours − mergekit| over all tensors (both bf16 outputs of θ_pre + θ_aux − θ_sft)."""
    from capvector.io import Checkpoint

    a, b = Checkpoint(ours), Checkpoint(theirs)
    worst = 0.0
    for name in a.keys():
        if name in b:
            worst = max(worst, float((a.read(name).float() - b.read(name).float()).abs().max()))
    return worst


KEYS = {"extract (+ sha256)": "extract_hashed", "extract (+ sha256, Hub cache)": "extract_hashed_hub",
        "sha256 of sft + aux only": "hash_sources", "sha256 of sft + aux only, Hub cache": "hash_sources_hub",
        "merge (warm cache)": "merge_warm"}


def markdown(results: dict) -> str:
    """The table for docs/benchmarks.md."""
    rows = ["| model (bf16) | operation | capvector s (CPU s) | raw IO s (CPU s) | raw IO / capvector | mergekit s | "
            "mergekit / capvector | peak RSS capvector | peak RSS mergekit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["sizes"]:
        mk = r.get("mergekit")
        ops = (("extract", "raw_extract_io"), ("extract (+ sha256)", "raw_extract_io"),
               ("extract (+ sha256, Hub cache)", "raw_extract_io"), ("sha256 of sft + aux only", None),
               ("sha256 of sft + aux only, Hub cache", None), ("merge", "raw_merge_io"),
               ("merge (warm cache)", "raw_merge_io_warm"))
        for op, raw in ops:
            ours = r.get(KEYS.get(op, op))
            if ours is None:  # results from before the Hub-cache row
                continue
            base = r[raw] if raw else None
            cells = [f"{r['size_gb']} GB, {r['tensors']} tensors", op, _seconds(ours), _seconds(base) if base else "-",
                     f"{base['seconds'] / ours['seconds']:.2f}" if base else "-"]
            if op == "merge" and mk:
                cells += [f"{mk['seconds']:.2f}", f"{mk['seconds'] / ours['seconds']:.2f}"]
            else:
                cells += ["-", "-"]
            mk_rss = f"{mk['peak_rss_mib']:.0f} MiB" if mk and op == "merge" else "-"
            cells += [f"{ours['peak_rss_mib']:.0f} MiB", mk_rss]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _seconds(run: dict) -> str:
    return f"{run['seconds']:.2f}" + (f" ({run['cpu_seconds']:.2f})" if "cpu_seconds" in run else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[1.5, 3.2])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/capvector-bench"))
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--shard-gb", type=float, default=1.0, help="shard size of the generated checkpoints")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "merge.json")
    args = ap.parse_args()
    mergekit = None if args.skip_mergekit else ensure_mergekit(args.workdir / "mergekit-venv")
    results = {
        "date": dt.date.today().isoformat(),
        "cold_cache": drop_page_cache(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        "sizes": [bench_size(s, args.workdir, mergekit, args.shard_gb) for s in args.sizes_gb],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
