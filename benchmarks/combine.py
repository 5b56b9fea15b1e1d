"""What `merge --combine ties|dare|dare-ties` costs beside the plain sum: time and peak memory, in one run.

Run: .venv/bin/python benchmarks/combine.py [--params-m 100] [--workdir /tmp/cv-combine] [--repeats 2]

Writes a bf16 θ_pre of about `--params-m` million parameters (one 32000×2048 embedding, which spans several
read chunks so TIES's threshold passes stream it, plus 2048×2048 matrices) and two fp32 vectors, then merges
them with each method in its own subprocess (peak RSS from wait4), inputs warm in the page cache so the
arithmetic, not the disk, is measured. Reported: seconds (best of the repeats), the ratio to `sum` in the
same run, and peak RSS. The load average is recorded: the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

METHODS = {m: [] if m == "sum" else ["--combine", m, "--density", "0.2"] for m in ("sum", "ties", "dare", "dare-ties")}


def shapes(params_m: float) -> dict[str, tuple[int, int]]:
    out = {"model.embed_tokens.weight": (32000, 2048)}
    for i in range(max(0, round((params_m * 1e6 - 32000 * 2048) / 2048**2))):
        out[f"model.layers.{i}.mlp.weight"] = (2048, 2048)
    return out


def write_inputs(work: Path, params_m: float) -> None:
    gen = torch.Generator().manual_seed(0)
    layout = shapes(params_m)
    (work / "pre").mkdir(parents=True, exist_ok=True)
    save_file({n: torch.randn(s, generator=gen).bfloat16() for n, s in layout.items()},
              work / "pre" / "model.safetensors")
    for v in ("v1", "v2"):
        d = work / v
        d.mkdir(exist_ok=True)
        tensors = {n: 1e-3 * torch.randn(s, generator=gen) for n, s in layout.items()}
        save_file(tensors, d / "vector.safetensors")
        meta = {"format": "capvector.vector", "format_version": 1, "dtype": "float32",
                "tensors": {n: {"shape": list(s), "storage": "dense"} for n, s in layout.items()}}
        (d / "capvector.json").write_text(json.dumps(meta))


def timed_merge(work: Path, method: str) -> dict:
    out = work / f"out-{method}"
    cmd = [sys.executable, "-m", "capvector.cli", "merge", "--base", str(work / "pre"), "--vector", str(work / "v1"),
           "--vector", str(work / "v2"), "--weight", "1", "--weight", "1", "--no-hash", "--overwrite",
           "-o", str(out), *METHODS[method]]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{method}: merge failed ({status})")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params-m", type=float, default=100)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/capvector-combine-bench"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    write_inputs(args.workdir, args.params_m)
    load_before = os.getloadavg()
    timed_merge(args.workdir, "sum")  # warm the page cache
    runs = {m: [timed_merge(args.workdir, m) for _ in range(args.repeats)] for m in METHODS}
    best = {m: min(r, key=lambda x: x["seconds"]) for m, r in runs.items()}
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "params": sum(a * b for a, b in shapes(args.params_m).values()),
        "load_before": load_before, "load_after": os.getloadavg(), "runs": runs,
        "ratio_to_sum": {m: best[m]["seconds"] / best["sum"]["seconds"] for m in METHODS},
    }
    print(json.dumps(result, indent=2))
    for m in METHODS:
        b = best[m]
        print(f"| {m} | {b['seconds']:.2f} | {result['ratio_to_sum'][m]:.2f} | {b['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
