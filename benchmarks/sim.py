"""Simulator throughput on CPU: physics, rendering, demo collection and rollout evaluation (1 vs 2 workers).

Measures what the end-to-end demo pays for: env steps/s without rendering, step+RGB render/s at 64 and
128 px, depth frames/s, collection seconds per kept episode (RGB + depth every step, compressed write),
expert rollouts per second with 1 and 2 workers, and, with --policy DIR, a trained tiny VLA's rollout cost.
Wall time and process CPU time are both reported (the machine may be shared).

    python benchmarks/sim.py [--json benchmarks/results/sim.json] [--policy RUN_DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import numpy as np

import capvector.sim  # noqa: F401  (sets MUJOCO_GL=osmesa before mujoco loads)
from capvector.data.collect import collect
from capvector.io.atomic import atomic_write_text
from capvector.sim import ScriptedExpert, SimConfig, SimEnv
from capvector.sim.evaluate import EvalConfig, evaluate

TASK = "push-v3"
EVAL_TASKS = ("reach-v3", "push-v3", "door-close-v3", "button-press-v3")


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def steps_per_s(size: int, render: str, steps: int = 300) -> dict:
    env = SimEnv(TASK, SimConfig(image_size=size, max_steps=10_000))
    expert = ScriptedExpert()
    expert.bind(env)
    env.reset(0)

    def run():
        for _ in range(steps):
            if render == "rgb":
                env.rig.rgb(env.data)
            elif render == "depth":
                env.rig.depth(env.data)
            _, done = env.step(expert.act({})[0])
            if done:
                env.reset(1)

    _, wall, cpu = _timed(run)
    env.close()
    return {"what": f"step+{render}" if render else "step only", "px": size if render else None,
            "per_s": steps / wall, "per_s_cpu": steps / cpu}


def collection(episodes: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        man, wall, cpu = _timed(lambda: collect(f"{tmp}/d", ["reach-v3", "door-close-v3"], episodes,
                                                 progress=False))
        n = len(man["episodes"])
        steps = sum(e["length"] for e in man["episodes"])
        mb = sum(e["bytes"] for e in man["episodes"]) / 1e6
    return {"episodes": n, "s_per_episode": wall / n, "cpu_s_per_episode": cpu / n, "steps_per_episode": steps / n,
            "mb_per_episode": mb / n}


def rollouts(policy, workers: int, episodes: int, execute: int | None = None) -> dict:
    cfg = EvalConfig(tasks=EVAL_TASKS, episodes=episodes, workers=workers, execute=execute)
    res, wall, _ = _timed(lambda: evaluate(policy, cfg))
    n = len(res.episodes)
    return {"workers": workers, "episodes": n, "s_per_episode": wall / n,
            "avg_length": float(np.mean([e.length for e in res.episodes])),
            "pc_success": 100.0 * sum(e.success for e in res.episodes) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--policy", default=None, help="trained policy/run dir for a learned-policy rollout cost")
    ap.add_argument("--episodes", type=int, default=3, help="rollout episodes per task")
    args = ap.parse_args()
    out = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "steps": [steps_per_s(64, ""), steps_per_s(64, "rgb"), steps_per_s(128, "rgb"),
                     steps_per_s(64, "depth")]}
    out["collect"] = collection()
    out["rollouts_expert"] = [rollouts(ScriptedExpert(), w, args.episodes) for w in (1, 2)]
    if args.policy:
        from capvector.train import load_trained

        pol = load_trained(args.policy)
        out["rollouts_policy"] = [rollouts(pol, 1, 1), rollouts(pol, 1, 1, execute=4)]
    print("| measurement | per s (wall) | per s (CPU) |\n| --- | --- | --- |")
    for r in out["steps"]:
        px = "" if r["px"] is None else f" @ {r['px']} px"
        print(f"| {r['what']}{px} | {r['per_s']:.0f} | {r['per_s_cpu']:.0f} |")
    c = out["collect"]
    print(f"\ncollection: {c['s_per_episode']:.2f} s/episode wall ({c['cpu_s_per_episode']:.2f} CPU), "
          f"{c['steps_per_episode']:.0f} steps, {c['mb_per_episode']:.2f} MB per episode")
    for r in out["rollouts_expert"] + out.get("rollouts_policy", []):
        print(f"rollouts: {r['workers']} worker(s): {r['s_per_episode']:.2f} s/episode over {r['episodes']} "
              f"(avg length {r['avg_length']:.0f}, {r['pc_success']:.0f}% success)")
    a, b = out["rollouts_expert"]
    print(f"2-worker speed-up: {a['s_per_episode'] / b['s_per_episode']:.2f}x")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
