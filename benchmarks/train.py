"""Training throughput and peak memory of the tiny policies on CPU: the tiny VLA full / LoRA / GSE, each + alignment
or + orth, and the tiny pi0 (flow matching) fully fine-tuned.

Each mode runs in its own process (so peak RSS is its own) through the real `Trainer`, on samples
generated once and held in memory (data generation is not timed). The first half of the steps is
warm-up; samples/s is measured over the second half; modes are interleaved and the best of `--repeats`
runs is kept, so other load on a shared machine distorts less. Ratios are relative to the tiny VLA's full
fine-tuning. `act()` latency (batch 1, as rollouts call it) is measured for both full-fine-tuning modes.

    python benchmarks/train.py [--threads 2] [--batch-size 64] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

MODES = {
    "full": {"tuner": "full"},
    "full+aux": {"tuner": "full", "aux_weight": 0.5},
    "full+aux-scene": {"tuner": "full", "aux_weight": 0.5, "teacher": "foundation"},  # the shipped scene teacher
    "lora": {"tuner": "lora", "lora_r": 16},
    "lora+aux": {"tuner": "lora", "lora_r": 16, "aux_weight": 0.5},
    "gse": {"tuner": "gse"},
    "full+orth": {"tuner": "full", "orth": "factored"},
    "lora+orth": {"tuner": "lora", "lora_r": 16, "orth": "lora"},
    "pi0": {"tuner": "full", "policy": "tiny-pi0"},  # same VLM shape, expert width 64, 10 Euler steps in act()
}
LATENCY_MODES = ("full", "pi0")


def _vector(config, directory: str) -> str:
    """A capability vector for the policy architecture `config`: τ = small seeded noise on every weight.

    Built on a fresh policy (PEFT tuners rename the trained one's modules); the regulariser only needs the
    vector's names and values, and reads W_meta from the model it regularises."""
    import torch

    from capvector.policy import build_policy, save_policy
    from capvector.vectors.extract import extract

    torch.manual_seed(0)
    policy = build_policy(config)
    moved = build_policy(config)
    moved.load_state_dict(policy.state_dict())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))
    save_policy(policy, f"{directory}/sft")
    save_policy(moved, f"{directory}/aux")
    extract(f"{directory}/sft", f"{directory}/aux", f"{directory}/vec", progress=False, hash_sources=False)
    return f"{directory}/vec"


def _child(mode: str, threads: int, batch: int, steps: int, width: int, depth: int, cameras: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from torch.utils.data import Dataset

    from capvector.policy import config_from_dict, count_parameters
    from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer


    class InMemory(Dataset):
        def __init__(self, src, n):
            self.items = [src[i] for i in range(n)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    options = dict(MODES[mode])
    orth_mode = options.pop("orth", None)
    pcfg = config_from_dict({"policy_type": options.pop("policy", "tiny-vla"), "width": width, "depth": depth,
                             "heads": max(1, width // 32), "num_cameras": cameras, "embedder": "hash"})
    data = InMemory(SyntheticDemoDataset(length=4 * batch, num_cameras=cameras, chunk=pcfg.chunk), 4 * batch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    half = steps // 2
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(output_dir=f"{d}/run", steps=steps, batch_size=batch, log_every=half, progress=False,
                          **options)
        trainer = Trainer(cfg, data, policy_config=pcfg)
        if orth_mode:
            from capvector.orth import OrthogonalRegularizer

            vec = _vector(pcfg, d)
            trainer.add_regularizer("orth", OrthogonalRegularizer.from_vector(trainer.model, vec, mode=orth_mode))
        t = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - t
        trainable = count_parameters(trainer.model, trainable_only=True)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    act_ms = None
    if mode in LATENCY_MODES:  # batch-1 inference latency of the trained policy, as rollouts call it
        policy = trainer.policy
        obs = {"image": data[0]["image"].numpy(), "proprio": data[0]["proprio"].numpy(),
               "instruction": data[0]["instruction"]}
        for _ in range(5):
            policy.act(obs)
        t = time.perf_counter()
        for _ in range(50):
            policy.act(obs)
        act_ms = (time.perf_counter() - t) / 50 * 1000
    return {"mode": mode, "act_ms": act_ms, "samples_per_s": result.history[-1]["samples_per_s"],
            "step_ms": 1000 * batch / result.history[-1]["samples_per_s"], "wall_s": wall,
            "trainable_params": trainable, "peak_rss_mb": rss1 / 1024, "train_rss_growth_mb": (rss1 - rss0) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode; the fastest is reported")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.threads, a.batch_size, a.steps, a.width, a.depth, a.cameras)))
        return
    best: dict[str, dict] = {}
    for _ in range(a.repeats):  # modes interleaved, best of `repeats`: robust to other load on a shared machine
        for mode in a.modes.split(","):
            cmd = [sys.executable, __file__, "--child", mode, "--threads", str(a.threads), "--batch-size",
                   str(a.batch_size), "--steps", str(a.steps), "--width", str(a.width), "--depth", str(a.depth),
                   "--cameras", str(a.cameras)]
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if mode not in best or row["samples_per_s"] > best[mode]["samples_per_s"]:
                best[mode] = row
    rows = list(best.values())
    base = next((r for r in rows if r["mode"] == "full"), None)
    print(f"# tiny policy training, width {a.width}, depth {a.depth}, {a.cameras} camera(s), batch {a.batch_size}, "
          f"{a.threads} threads, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print("| mode | trainable params | samples/s | ms/step | step time vs full | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = r["step_ms"] / base["step_ms"] if base else float("nan")
        print(f"| {r['mode']} | {r['trainable_params']:,} | {r['samples_per_s']:.0f} | {r['step_ms']:.0f} | "
              f"{ratio:.2f}× | {r['peak_rss_mb']:.0f} |")
    for r in rows:
        if r.get("act_ms") is not None:
            print(f"\nbatch-1 `act()` latency ({r['mode']}): {r['act_ms']:.1f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
