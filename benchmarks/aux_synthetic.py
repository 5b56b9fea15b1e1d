"""A first, cheap reading of the alignment objective on the synthetic contract dataset (no simulator).

SFT and SFT + spatial alignment start from the same fresh init, see the same batches for the same
steps, and are scored by masked action L1 on held-out synthetic episodes (a different dataset seed).
This is not the CapVector measurement (that needs rollouts on MetaWorld); it checks that the objective
trains, how much it costs per step, and whether it moves held-out error at all.

    python benchmarks/aux_synthetic.py [--steps 300] [--seeds 0 1 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import Dataset, default_collate

from capvector.policy import PolicyConfig, action_l1
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer


class InMemory(Dataset):
    def __init__(self, src: Dataset) -> None:
        self.items = [src[i] for i in range(len(src))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@torch.no_grad()
def held_out_l1(policy, data: Dataset) -> float:
    policy.eval()
    batch = default_collate([data[i] for i in range(len(data))])
    out = policy(batch["image"], batch["proprio"], policy.embed_instructions(batch["instruction"]))
    return float(action_l1(out.actions, batch["actions"], batch["action_mask"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--aux-weight", type=float, default=0.5)
    ap.add_argument("--aux-layer", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pcfg = PolicyConfig(embedder="hash")
    train = InMemory(SyntheticDemoDataset(length=1024, chunk=pcfg.chunk, seed=0))
    test = InMemory(SyntheticDemoDataset(length=256, chunk=pcfg.chunk, seed=99))
    results: dict[str, list[float]] = {"sft": [], "aux": []}
    times: dict[str, list[float]] = {"sft": [], "aux": []}
    for seed in a.seeds:
        for name, weight in (("sft", 0.0), ("aux", a.aux_weight)):
            with tempfile.TemporaryDirectory() as d:
                cfg = TrainConfig(output_dir=d, steps=a.steps, batch_size=a.batch_size, lr=1e-3, seed=seed,
                                  aux_weight=weight, aux_layer=a.aux_layer, progress=False, log_every=a.steps)
                t = time.perf_counter()
                trainer = Trainer(cfg, train, policy_config=pcfg)
                trainer.train()
                times[name].append((time.perf_counter() - t) / a.steps * 1000)
                results[name].append(held_out_l1(trainer.policy, test))
            print(f"seed {seed} {name}: held-out L1 {results[name][-1]:.4f}, {times[name][-1]:.0f} ms/step", flush=True)
    print(f"\n{a.steps} steps × batch {a.batch_size}, {a.threads} threads, α={a.aux_weight}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| run | held-out action L1 (mean ± sd) | ms/step |")
    print("| --- | --- | ---: |")
    for name in ("sft", "aux"):
        v = results[name]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"| {name} | {statistics.mean(v):.4f} ± {sd:.4f} (n={len(v)}) | {statistics.mean(times[name]):.0f} |")


if __name__ == "__main__":
    main()
