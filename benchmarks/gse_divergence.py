"""Where do two GSE (or LoRA) trainings that differ only in torch's thread count part ways?

Trains the shipped pretrained tiny VLA with `capvector.train.Trainer` twice from the same seed on the
synthetic dataset, once with `--threads-a` and once with `--threads-b` torch threads (or, with `--perturb
EPS`, once more with `--threads-a` threads from pretrained weights scaled by 1 + EPS·N(0, 1)), and records every
step: the loss, the GSE routing (the top-k set of every token in every adapted layer) and the logit gap
between each token's k-th and (k+1)-th expert; at log-spaced steps the trainable weights. It prints where
the runs first differ (bits of the loss, the weights, any token's top-k set), the fraction of tokens whose
top-k set differs per step, the near-tie statistics and the relative weight distance over steps.

    OMP_NUM_THREADS=1 python benchmarks/gse_divergence.py --tuner gse --steps 40 --samples 128   # 1 vs 2 threads
    OMP_NUM_THREADS=1 python benchmarks/gse_divergence.py --tuner gse --steps 200 --stop-at 130 --perturb 1e-7 \
        [--gse '{"aux_loss_weight": 0.0}']
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from capvector.assets import pretrained_policy_dir
from capvector.gse.layer import GSELayer
from capvector.policy import load_policy
from capvector.train import TrainConfig
from capvector.train.synthetic import SyntheticDemoDataset
from capvector.train.trainer import Trainer

GAP_THRESHOLDS = (1e-6, 1e-5, 1e-4, 1e-3)


class _Frozen(torch.utils.data.Dataset):
    """The synthetic dataset rendered once, so both runs read the same samples without re-rendering."""

    def __init__(self, source: torch.utils.data.Dataset) -> None:
        self.items = [source[i] for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class Recorder:
    """Called by the trainer as a (zero) regulariser after each forward: reads the routing and the weights."""

    def __init__(self, model: torch.nn.Module, weight_steps: set[int]) -> None:
        self.model, self.weight_steps = model, weight_steps
        self.layers = [m for m in model.modules() if isinstance(m, GSELayer)]
        self.step = 0
        self.codes: list[torch.Tensor] = []  # per step: (layers, tokens) top-k set as a bit code
        self.gaps: list[dict] = []
        self.weights: dict[int, torch.Tensor] = {}

    def __call__(self) -> torch.Tensor:
        if self.step in self.weight_steps:  # weights after `step` optimiser steps
            self.weights[self.step] = torch.cat([p.detach().flatten().clone() for p in self.model.parameters()
                                                 if p.requires_grad])
        if self.layers:
            codes, gaps = [], []
            for layer in self.layers:
                logits, _, picked = layer._last_route["default"]
                bits = 2 ** torch.arange(picked.shape[1])
                codes.append((picked.long() * bits).sum(1))
                k = int(picked[0].sum())
                top = logits.detach().topk(k + 1, dim=1).values
                gaps.append(top[:, k - 1] - top[:, k])
            gap = torch.cat(gaps)
            self.codes.append(torch.stack(codes))
            self.gaps.append({"min": float(gap.min()), "median": float(gap.median()),
                              **{f"<{t:g}": float((gap < t).float().mean()) for t in GAP_THRESHOLDS}})
        self.step += 1
        return torch.zeros(())


def perturbed_policy(eps: float) -> torch.nn.Module:
    """The pretrained policy with every weight scaled by (1 + eps·n), n ~ N(0, 1) from a fixed generator."""
    policy = load_policy(pretrained_policy_dir())
    if eps:
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(1 + eps * torch.randn(p.shape, generator=gen))
    return policy


def run(args: argparse.Namespace, threads: int, dataset: torch.utils.data.Dataset, weight_steps: set[int],
        eps: float = 0.0) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"gse_options": json.loads(args.gse)} if args.tuner == "gse" else {}
        cfg = TrainConfig(output_dir=tmp, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          tuner=args.tuner, also_train=["action_expert.*"], lora_alpha=16, progress=False,
                          log_every=1, warmup_steps=min(50, args.steps // 4), **extra)
        trainer = Trainer(cfg, dataset, policy=perturbed_policy(eps))
        recorder = Recorder(trainer.model, weight_steps)
        trainer.add_regularizer("record", recorder)
        start = time.process_time()
        result = trainer.train(resume=False, stop_at=args.stop_at)
        cpu = time.process_time() - start
    return {"loss": [h["loss"] for h in result.history], "rec": recorder, "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuner", default="gse", choices=["gse", "lora"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this many steps (schedule of --steps)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--threads-a", type=int, default=1)
    ap.add_argument("--threads-b", type=int, default=2)
    ap.add_argument("--perturb", type=float, default=0.0,
                    help="run B: --threads-a threads, pretrained weights scaled by (1 + eps·N(0,1)) instead")
    ap.add_argument("--gse", default="{}", help="GSEConfig options as JSON (beside target_modules)")
    ap.add_argument("--json", default=None, help="write the per-step record here")
    args = ap.parse_args()
    dataset = _Frozen(SyntheticDemoDataset(length=args.samples, seed=args.seed))
    last = min(args.steps, args.stop_at or args.steps) - 1
    weight_steps = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, last} & set(range(last + 1))
    a = run(args, args.threads_a, dataset, weight_steps)
    b = (run(args, args.threads_a, dataset, weight_steps, args.perturb) if args.perturb
         else run(args, args.threads_b, dataset, weight_steps))
    ra, rb = a["rec"], b["rec"]
    first_loss = next((i for i, (x, y) in enumerate(zip(a["loss"], b["loss"], strict=True)) if x != y), None)
    dist = {s: float((ra.weights[s] - rb.weights[s]).norm() / ra.weights[s].norm().clamp_min(1e-30))
            for s in sorted(weight_steps)}
    first_weight = next((s for s, d in dist.items() if d > 0), None)
    out = {"tuner": args.tuner, "gse": json.loads(args.gse), "steps": args.steps,
           "threads": [args.threads_a, args.threads_a if args.perturb else args.threads_b], "perturb": args.perturb,
           "cpu_s": [a["cpu_s"], b["cpu_s"]], "first_loss_diff_step": first_loss,
           "first_weight_diff_step(logged)": first_weight, "weight_rel_dist": dist,
           "loss_a_b_last": [a["loss"][-1], b["loss"][-1]]}
    if ra.codes:
        flips = [float((ca != cb).float().mean()) for ca, cb in zip(ra.codes, rb.codes, strict=True)]
        out["first_routing_diff_step"] = next((i for i, f in enumerate(flips) if f > 0), None)
        out["routing_diff_fraction"] = {i: flips[i] for i in sorted({0, 1, 2, 5, 10, 20, 50, 100, 150, 199, 299,
                                                                    399, len(flips) - 1}) if i < len(flips)}
        out["gap_step0"] = ra.gaps[0]
        out["gap_min_over_steps"] = min(g["min"] for g in ra.gaps)
        out["gap_mean_fraction"] = {t: sum(g[t] for g in ra.gaps) / len(ra.gaps) for t in ra.gaps[0]
                                    if t.startswith("<")}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out | {"loss_a": a["loss"], "loss_b": b["loss"], "gaps_a": ra.gaps}, f)


if __name__ == "__main__":
    main()
