"""Does an auxiliary objective help? SFT vs SFT + alignment from the same θ_pre on the same batches (same seed,
same data order), scored by MetaWorld rollouts over several training seeds (docs/policy.md §5).

    python benchmarks/aux_rollouts.py --data DEMO_DIR --out runs/aux-check [--teacher foundation]
        [--aux-weight 0.5] [--aux-layer 2] [--steps 400] [--snapshot 150] [--seeds 100 101 102 103 104]
        [--eval-seed 3000] [--perturb camera:0.5]

DEMO_DIR comes from `capvector collect` (e.g. `--split down --episodes 10 --noise 0.1 --seed 200`). Settings are
chosen on the validation ranges (training seeds 100–199, rollout base seed 3000, the defaults here); the demo
reports on its own test ranges. Prints per-seed success, aux − SFT as the mean of per-seed differences with a
paired t interval over seeds (the test) and Newcombe's episode-level interval (a description), and the wall-time
ratio; writes results.json into --out. A finished arm/seed is skipped when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from capvector.data import open_dataset
from capvector.pipeline.config import VALIDATION_EVAL_SEED, VALIDATION_TRAIN_SEEDS
from capvector.sim.env import SimConfig
from capvector.sim.evaluate import EvalConfig, evaluate
from capvector.sim.perturb import parse_perturbation
from capvector.sim.tasks import split_tasks
from capvector.stats import newcombe_difference, seed_difference, wilson_interval
from capvector.train import TrainConfig, load_trained, run_training, snapshot_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init", default=None, help="θ_pre (default: the shipped weights)")
    p.add_argument("--split", default="down", help="tasks to evaluate on")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--snapshot", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--aux-weight", type=float, default=0.5)
    p.add_argument("--aux-layer", type=int, default=None)
    p.add_argument("--teacher", default="geometry")
    p.add_argument("--teacher-path", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=list(VALIDATION_TRAIN_SEEDS[:5]))
    p.add_argument("--episodes", type=int, default=10, help="per task and seed")
    p.add_argument("--eval-seed", type=int, default=VALIDATION_EVAL_SEED, help="rollout base seed (validation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (numerics depend on it)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--arms", nargs="+", choices=["sft", "aux"], default=["sft", "aux"],
                   help="train only these arms now (finished ones are reused; the report needs both)")
    p.add_argument("--perturb", action="append", default=[], help="extra variants at the final budget")
    args = p.parse_args()
    if args.init is None:
        from capvector.assets import pretrained_policy_dir

        args.init = str(pretrained_policy_dir())

    dataset = open_dataset(args.data)
    tasks = tuple(split_tasks(args.split))
    out = Path(args.out)

    def rollouts(policy_dir: Path, variant: str) -> tuple[int, int]:
        cfg = EvalConfig(tasks=tasks, episodes=args.episodes, seed=args.eval_seed, workers=args.workers,
                         sim=SimConfig(max_steps=150), perturbations=(parse_perturbation(variant),))
        o = evaluate(load_trained(policy_dir), cfg).summary()["overall"]
        return o["n_success"], o["n_episodes"]

    rows: dict[str, dict] = {}
    for seed in args.seeds:
        for arm, weight in (("sft", 0.0), ("aux", args.aux_weight)):
            run = out / f"{arm}_seed{seed}"
            done = run / "row.json"
            if done.is_file():
                rows[f"{arm}/{seed}"] = json.loads(done.read_text())
                continue
            if arm not in args.arms:
                continue
            cfg = TrainConfig(output_dir=str(run), init=args.init, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, seed=seed, aux_weight=weight, aux_layer=args.aux_layer,
                              teacher=args.teacher, teacher_path=args.teacher_path, threads=args.threads,
                              snapshot_steps=[args.snapshot], progress=False, log_every=50)
            t0 = time.perf_counter()
            run_training(cfg, dataset)
            row = {"train_s": time.perf_counter() - t0,
                   f"step{args.snapshot}": rollouts(snapshot_dir(run, args.snapshot), "none"),
                   f"step{args.steps}": rollouts(run, "none")}
            for variant in args.perturb:
                row[f"step{args.steps}:{variant}"] = rollouts(run, variant)
            rows[f"{arm}/{seed}"] = row
            done.write_text(json.dumps(row))
            print(arm, seed, row, flush=True)

    if len(rows) < 2 * len(args.seeds):
        print(f"{len(rows)} of {2 * len(args.seeds)} arm/seed runs are done; run again with both arms to report")
        return
    report = {"args": vars(args), "runs": rows, "pooled": {}}
    for key in rows[f"sft/{args.seeds[0]}"]:
        if key == "train_s":
            continue
        pooled: dict = {}
        for arm in ("sft", "aux"):
            k = sum(rows[f"{arm}/{s}"][key][0] for s in args.seeds)
            n = sum(rows[f"{arm}/{s}"][key][1] for s in args.seeds)
            lo, hi = wilson_interval(k, n)
            pooled[arm] = {"k": k, "n": n, "pc": 100 * k / n, "ci95": [100 * lo, 100 * hi],
                           "by_seed": {s: 100 * rows[f"{arm}/{s}"][key][0] / rows[f"{arm}/{s}"][key][1]
                                       for s in args.seeds}}
        d, lo, hi = newcombe_difference(pooled["aux"]["k"], pooled["aux"]["n"], pooled["sft"]["k"], pooled["sft"]["n"])
        seed_level = seed_difference(pooled["aux"]["by_seed"], pooled["sft"]["by_seed"])
        pooled["aux_minus_sft_pp"] = {"seed_level": [seed_level["diff"], *seed_level["ci"]],
                                      "episodes": [100 * d, 100 * lo, 100 * hi]}
        report["pooled"][key] = pooled
        per_seed = "  ".join(f"{s}: {pooled['sft']['by_seed'][s]:.0f}/{pooled['aux']['by_seed'][s]:.0f}"
                             for s in args.seeds)
        print(f"{key}: SFT {pooled['sft']['pc']:.1f}%  aux {pooled['aux']['pc']:.1f}%  aux − SFT "
              f"{seed_level['diff']:+.1f} pp [{seed_level['ci'][0]:+.1f}, {seed_level['ci'][1]:+.1f}] (paired t over "
              f"{len(args.seeds)} seeds; episodes [{100 * lo:+.1f}, {100 * hi:+.1f}])  per seed SFT/aux {per_seed}")
    ratio = sum(rows[f"aux/{s}"]["train_s"] for s in args.seeds) / sum(rows[f"sft/{s}"]["train_s"] for s in args.seeds)
    report["aux_over_sft_wall_time"] = ratio
    print(f"wall time aux / SFT: {ratio:.2f}x")
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
