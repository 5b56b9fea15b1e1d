"""LeRobotDataset v3.0 export and import against capvector's own format, on the same episodes.

    python benchmarks/lerobot_data.py [--data DEMO_DIR] [--repeats 3]

Without --data it collects 2 episodes each of reach-v3 and push-v3 at 64 px (the [sim] extra). Prints sizes
(npz vs parquet + mp4) and, as ratios against a baseline timed in the same run: the export against reading every
npz episode once (what any export must do), and one pass over every sample with a cold cache, LeRobot reader
(parquet rows + video decode) against DemoDataset (npz decompression); the samples are checked identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from capvector.data import open_dataset
from capvector.data.format import load_episode, read_manifest
from capvector.data.lerobot import export_lerobot


def _size(root: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in root.rglob(pattern) if f.is_file())


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _one_pass(path: Path) -> None:
    ds = open_dataset(path, cache_mb=4096)
    for i in range(len(ds)):
        ds[i]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            from capvector.data.collect import collect

            data = work / "demos"
            collect(data, ["reach-v3", "push-v3"], 2, seed=0, progress=False)
        manifest = read_manifest(data)
        counter = iter(range(args.repeats))
        read_npz = _best(lambda: [load_episode(data, e) for e in manifest["episodes"]], args.repeats)
        export = _best(lambda: export_lerobot(data, work / f"lr{next(counter)}"), args.repeats)
        out = work / "lr0"
        a, b = open_dataset(data), open_dataset(out)
        same = all(torch.equal(a[i][k], b[i][k]) for i in range(len(a)) for k in a[i]
                   if isinstance(a[i][k], torch.Tensor))
        npz_pass, lerobot_pass = _best(lambda: _one_pass(data), args.repeats), _best(lambda: _one_pass(out),
                                                                                       args.repeats)
        result = {"episodes": len(manifest["episodes"]), "frames": len(a), "identical_samples": same,
                  "bytes": {"npz": _size(data, "*.npz"), "lerobot": _size(out), "mp4": _size(out, "*.mp4"),
                            "parquet": _size(out, "*.parquet")},
                  "export_s": round(export, 3), "read_npz_s": round(read_npz, 3),
                  "export_over_npz_read": round(export / read_npz, 2),
                  "one_pass_s": {"npz": round(npz_pass, 3), "lerobot": round(lerobot_pass, 3)},
                  "one_pass_lerobot_over_npz": round(lerobot_pass / npz_pass, 2)}
        result["bytes"]["lerobot_over_npz"] = round(result["bytes"]["lerobot"] / result["bytes"]["npz"], 2)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
