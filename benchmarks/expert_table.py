"""Scripted-expert success on every MetaWorld v3 task (or the tasks named, e.g. the robosuite ones): which tasks can
supply demonstrations.

Physics only (no rendering), the demo's horizon and its collection noise. Writes JSON and prints a Markdown table
for docs/simulator.md. A task whose expert succeeds in ≥ 90% of noisy episodes is usable for demonstrations.

    python benchmarks/expert_table.py --episodes 20 -o runs/expert_table.json
    python benchmarks/expert_table.py --tasks rs-lift-panda rs-stack-panda -o runs/expert_table_robosuite.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from capvector.sim.base import SimConfig, make_env
from capvector.sim.evaluate import episode_seed
from capvector.sim.experts import ScriptedExpert
from capvector.stats import wilson_interval


def run_task(task: str, episodes: int, noise: float, max_steps: int, seed: int) -> dict:
    env = make_env(task, SimConfig(max_steps=max_steps))
    expert = ScriptedExpert(noise=noise, seed=seed)
    expert.bind(env)
    wins, lengths = 0, []
    try:
        for ep in range(episodes):
            env.reset(episode_seed(seed, task, ep))
            done = success = False
            while not done:
                success, done = env.step(expert.act({})[0])
            wins += success
            lengths.append(env.steps)
    finally:
        env.close()
    lo, hi = wilson_interval(wins, episodes)
    return {"task": task, "noise": noise, "episodes": episodes, "success": wins, "pc": 100 * wins / episodes,
            "ci95": [100 * lo, 100 * hi], "mean_steps": float(np.mean(lengths))}


def main() -> None:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--tasks", nargs="+", default=sorted(ALL_V3_ENVIRONMENTS))
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("-o", "--output", type=Path, default=Path("runs/expert_table.json"))
    a = p.parse_args()
    rows = []
    start = time.perf_counter()
    for task in a.tasks:
        for noise in a.noise:
            rows.append(run_task(task, a.episodes, noise, a.max_steps, a.seed))
            r = rows[-1]
            print(f"{task:30s} noise {noise:.2f}: {r['success']:2d}/{a.episodes} steps {r['mean_steps']:.0f}",
                  flush=True)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "max_steps": a.max_steps, "seed": a.seed,
                                    "seconds": time.perf_counter() - start, "rows": rows}, indent=1) + "\n")
    header = " | ".join(f"noise {n:g}" for n in a.noise)
    print(f"\n| task | {header} | mean steps |\n|---|" + "---|" * len(a.noise) + "---|")
    for task in a.tasks:
        mine = [r for r in rows if r["task"] == task]
        cells = " | ".join(f"{r['success']}/{r['episodes']}" for r in mine)
        print(f"| {task} | {cells} | {mine[-1]['mean_steps']:.0f} |")


if __name__ == "__main__":
    main()
