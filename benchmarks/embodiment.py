"""The second embodiment's cost against MetaWorld's in the same run: env creation, reset, and a step with the
policy's 64 px render, robosuite's Panda (`rs-…` tasks) vs MetaWorld's Sawyer, each driven by its scripted expert.

Each simulator is imported first and its import timed apart, so creation times are the env's own.
Prints each env's times and the robosuite / MetaWorld ratios (wall and process CPU time; the machine may be shared).

    python benchmarks/embodiment.py [--steps 300] [--json benchmarks/results/embodiment.json]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import time

import capvector.sim  # noqa: F401  (sets MUJOCO_GL=osmesa before mujoco loads)
from capvector.io.atomic import atomic_write_text
from capvector.sim.base import SimConfig, make_env
from capvector.sim.experts import ScriptedExpert

PAIRS = (("pick-place-v3", "rs-lift-panda"), ("pick-place-v3", "rs-stack-panda"))


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def measure(task: str, steps: int) -> dict:
    """Creation, mean reset and mean step+render (64 px) over `steps` expert steps (a new seed at each episode end)."""
    box: dict = {}
    make_wall, make_cpu = _timed(lambda: box.setdefault("env", make_env(task, SimConfig(image_size=64,
                                                                                          max_steps=150))))
    env = box["env"]
    expert = ScriptedExpert(noise=0.1, seed=0)
    expert.bind(env)
    resets = [0]

    def reset() -> None:
        env.reset(1000 + resets[0])
        resets[0] += 1

    reset_wall, _ = _timed(reset)

    def run() -> None:
        for _ in range(steps):
            env.observation()
            _, done = env.step(expert.act({})[0])
            if done:
                reset()

    step_wall, step_cpu = _timed(run)
    env.close()
    return {"task": task, "make_s": make_wall, "make_cpu_s": make_cpu, "reset_s": reset_wall,
            "step_render_ms": 1000 * step_wall / steps, "step_render_cpu_ms": 1000 * step_cpu / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    imports = {}
    for name, module in (("metaworld", "metaworld.env_dict"), ("robosuite", "robosuite")):
        imports[name] = _timed(lambda m=module: importlib.import_module(m))[0]
    rows = {}
    for pair in PAIRS:
        for task in pair:
            if task not in rows:
                rows[task] = measure(task, args.steps)
    out = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "load_avg_1min": os.getloadavg()[0], "steps": args.steps, "import_s": imports,
           "rows": list(rows.values())}
    print(f"import: metaworld {imports['metaworld']:.2f} s, robosuite {imports['robosuite']:.2f} s")
    print("| task | create s | reset ms | step+render ms (wall) | step+render ms (CPU) |\n|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['task']} | {r['make_s']:.2f} | {1000 * r['reset_s']:.1f} | {r['step_render_ms']:.1f} | "
              f"{r['step_render_cpu_ms']:.1f} |")
    for mw, rs in PAIRS:
        a, b = rows[mw], rows[rs]
        print(f"{rs} / {mw}: creation {b['make_s'] / a['make_s']:.2f}x, step+render "
              f"{b['step_render_ms'] / a['step_render_ms']:.2f}x wall, "
              f"{b['step_render_cpu_ms'] / a['step_render_cpu_ms']:.2f}x CPU")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
