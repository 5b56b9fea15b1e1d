"""Collect scripted-expert demonstrations into the on-disk format, resumably, with a progress bar.

Each task gets `episodes` kept episodes; attempt k of a task uses the evaluator's seed scheme, so a rerun
(or a resume after a crash) reproduces the same episodes. Executed actions may carry Gaussian noise for
state diversity; the *recorded* action is always the expert's clean action at that state (DART-style labels).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from capvector.data.format import FORMAT_VERSION, MANIFEST, read_manifest, verify_episode, write_episode, write_manifest
from capvector.errors import CapvectorError
from capvector.progress import ProgressBar
from capvector.sim.base import SimConfig, TaskEnv, make_env
from capvector.sim.evaluate import episode_seed
from capvector.sim.experts import ScriptedExpert
from capvector.sim.perturb import Perturbation, Scene, as_scene


def record_episode(env: TaskEnv, expert: ScriptedExpert, seed: int,
                   perturbation: Perturbation | Scene | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Run the expert once, rendering every step; returns (arrays, success)."""
    env.reset(seed, perturbation)
    expert.bind(env)
    rng = np.random.default_rng([seed, 31])
    frames: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "depth", "proprio", "actions", "state",
                                                          "cam_to_world")}
    done = success = False
    while not done:
        image, depth = env.rig.rgb_depth(env.data)
        clean = expert.clean_action()
        frames["image"].append(image)
        frames["depth"].append(depth)
        frames["cam_to_world"].append(env.rig.cam_to_world(env.data))
        frames["proprio"].append(env.proprio())
        frames["state"].append(env.raw_obs.astype(np.float32))
        frames["actions"].append(clean)
        executed = clean if expert.noise <= 0 else np.clip(clean + rng.normal(scale=expert.noise, size=4), -1, 1)
        success, done = env.step(executed)
    arrays = {k: np.stack(v) for k, v in frames.items()}
    arrays["intrinsics"] = env.rig.intrinsics()
    return arrays, success


def collect(output: str | Path, tasks: list[str], episodes: int, seed: int = 0, noise: float = 0.0,
            sim: SimConfig | None = None, keep_failed: bool = False, max_attempts_factor: int = 3,
            progress: bool = True, split: str | None = None,
            perturbation: Perturbation | Scene | None = None) -> dict[str, Any]:
    """Write (or resume) a dataset of `episodes` kept episodes per task; returns the manifest.

    `perturbation` sets each episode's scene (e.g. camera:0.5 draws a camera pose per episode from its seed; a
    fixed scene such as camera:0.5+colors:0.5@7 records every episode in one novel environment), so the recorded
    images, depth and camera extrinsics follow it."""
    root = Path(output)
    sim = sim or SimConfig()
    settings = {"tasks": list(tasks), "episodes_per_task": episodes, "seed": seed, "noise": noise,
                "sim": asdict(sim), "keep_failed": keep_failed, "split": split}
    scene = as_scene(perturbation)
    if scene.parts:
        settings["perturbation"] = scene.label  # absent otherwise, so older datasets still resume
    settings = json.loads(json.dumps(settings))  # as stored (tuples become lists), so a resume compares equal
    if (root / MANIFEST).exists():
        manifest = read_manifest(root)
        old = dict(manifest["settings"], episodes_per_task=episodes)  # more episodes per task extends a dataset
        if old != settings:
            diff = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
            raise CapvectorError(f"dataset {root}: exists with different settings {diff}; "
                                 "choose another output or the same options to resume")
        for e in manifest["episodes"]:
            verify_episode(root, e)
        manifest["settings"], manifest["complete"] = settings, False
    elif root.exists() and any(root.iterdir()):
        raise CapvectorError(f"output {root} exists and is not a capvector dataset; choose an empty path")
    else:
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": FORMAT_VERSION, "complete": False, "settings": settings,
                    "episodes": [], "attempts": {}}
    total = episodes * len(tasks)
    start = time.perf_counter()
    with ProgressBar("collect", total, completed=len(manifest["episodes"]), enabled=progress) as bar:
        expert = ScriptedExpert(noise=noise)
        for task in tasks:
            kept = sum(e["task"] == task for e in manifest["episodes"])
            attempt = manifest["attempts"].get(task, 0)
            if kept >= episodes:
                continue
            bar.update(label=f"collect {task}")
            env = make_env(task, sim)
            try:
                while kept < episodes:
                    if attempt >= max_attempts_factor * episodes:
                        raise CapvectorError(f"collect {task}: only {kept}/{episodes} successful episodes in "
                                             f"{attempt} attempts; use --keep-failed or lower --noise")
                    ep_seed = episode_seed(seed, task, attempt)
                    arrays, success = record_episode(env, expert, ep_seed, scene)
                    attempt += 1
                    manifest["attempts"][task] = attempt
                    if success or keep_failed:
                        entry = write_episode(root, len(manifest["episodes"]), arrays)
                        entry |= {"task": task, "instruction": env.instruction, "seed": ep_seed, "success": success}
                        manifest["episodes"].append(entry)
                        kept += 1
                        bar.advance()
                    write_manifest(root, manifest)
            finally:
                env.close()
    manifest["complete"] = True
    manifest["collect_s"] = round(manifest.get("collect_s", 0.0) + time.perf_counter() - start, 3)
    write_manifest(root, manifest)
    return manifest
