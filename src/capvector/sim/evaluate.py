"""Rollout evaluation: N seeded episodes per task and variant, in worker processes, with Wilson intervals.

Episode seeds depend only on (seed, task, episode index), never on the worker, so results with any number
of workers equal the sequential ones. Workers are forked: the policy object is inherited, not pickled.
Rendering happens only when the policy is queried (and for recorded videos), which is what makes
chunked policies cheap to evaluate.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_file
from capvector.sim.base import SimConfig, TaskEnv, make_env
from capvector.sim.perturb import Perturbation, Scene
from capvector.sim.policy_api import Policy
from capvector.stats import wilson_interval


@dataclass(frozen=True)
class EvalConfig:
    """What to run; `execute` = how many actions of each chunk run open-loop (None = the whole chunk)."""

    tasks: tuple[str, ...]
    episodes: int = 10
    seed: int = 0
    perturbations: tuple[Perturbation | Scene, ...] = (Perturbation(),)  # the variants (a scene is one variant)
    execute: int | None = None
    workers: int = 1
    sim: SimConfig = SimConfig()
    videos: int = 0  # record the first `videos` episodes of each task/variant
    video_dir: str | None = None


@dataclass
class EpisodeResult:
    task: str
    variant: str
    episode: int
    seed: int
    success: bool
    length: int
    video: str | None = None
    sum_reward: float | None = None  # the environment's dense reward over the episode (None: not recorded)
    max_reward: float | None = None


@dataclass
class EvalResult:
    config: dict[str, Any]
    episodes: list[EpisodeResult] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """LeRobot's eval_info shape plus 95% Wilson intervals.

        As in lerobot-eval: `overall` (avg_sum_reward, avg_max_reward, pc_success, n_episodes, eval_s,
        eval_ep_s, video_paths), `per_group` and `per_task` entries {task_group, task_id, metrics} with
        per-episode lists. A variant (perturbation, or a LIBERO suite) is a task group; task_id numbers the
        tasks in the order they were run. Each aggregate also holds n_success, ci95 and avg_length;
        `per_variant` is `per_group` under the name the pipeline reads.
        """
        groups: dict[tuple[str, str], list[EpisodeResult]] = {}
        for e in self.episodes:
            groups.setdefault((e.task, e.variant), []).append(e)
        task_ids = {task: i for i, task in enumerate(dict.fromkeys(e.task for e in self.episodes))}
        per_task = [{"task_group": variant, "task_id": task_ids[task], "task": task, "variant": variant,
                     "metrics": _episode_metrics(eps)} | _aggregate(eps) for (task, variant), eps in groups.items()]
        variants = {v: _aggregate([e for e in self.episodes if e.variant == v])
                    for v in dict.fromkeys(e.variant for e in self.episodes)}
        eval_s = round(self.seconds, 3)
        eval_ep_s = round(self.seconds / max(1, len(self.episodes)), 4)
        return {"overall": _aggregate(self.episodes) | {"eval_s": eval_s, "eval_ep_s": eval_ep_s},
                "per_group": variants, "per_variant": variants, "per_task": per_task,
                "episodes": [asdict(e) for e in self.episodes], "config": self.config}


def _episode_metrics(eps: Sequence[EpisodeResult]) -> dict[str, list]:
    """lerobot-eval's per-task `metrics`: one entry per episode."""
    return {"sum_rewards": [e.sum_reward for e in eps], "max_rewards": [e.max_reward for e in eps],
            "successes": [e.success for e in eps], "video_paths": [e.video for e in eps if e.video]}


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean over the episodes; None when any episode has no value (e.g. an environment without rewards)."""
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _aggregate(eps: Sequence[EpisodeResult]) -> dict[str, Any]:
    n, k = len(eps), sum(e.success for e in eps)
    lo, hi = wilson_interval(k, n)
    return {"n_episodes": n, "n_success": k, "pc_success": 100.0 * k / max(n, 1),
            "ci95": [100.0 * lo, 100.0 * hi], "avg_length": float(np.mean([e.length for e in eps])) if eps else 0.0,
            "avg_sum_reward": _mean_or_none([e.sum_reward for e in eps]),
            "avg_max_reward": _mean_or_none([e.max_reward for e in eps]),
            "video_paths": [e.video for e in eps if e.video]}


def episode_seed(seed: int, task: str, episode: int) -> int:
    """Stable per-episode seed (crc32, not Python's salted hash)."""
    return (seed * 1_000_003 + zlib.crc32(task.encode()) * 7919 + episode) % (2**31 - 1)


def run_episode(env: TaskEnv, policy: Policy, seed: int, pert: Perturbation | Scene, execute: int | None,
                frames: list[np.ndarray] | None = None, rewards: list[float] | None = None) -> tuple[bool, int]:
    """One rollout; returns (success, steps), appending each step's reward to `rewards` when given."""
    env.reset(seed, pert)
    policy.reset()
    bind = getattr(policy, "bind", None)
    if bind is not None:
        bind(env)
    done = success = False
    while not done:
        obs = env.observation()
        chunk = np.asarray(policy.act(obs), dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != 4 or chunk.shape[0] < 1:
            raise CapvectorError(f"policy.act: expected an action chunk (K, 4), found shape {chunk.shape}")
        for i, action in enumerate(chunk[:execute] if execute else chunk):
            if frames is not None:
                frames.append(obs["image"][0].transpose(1, 2, 0) if i == 0 else
                              env.rig.rgb(env.data)[0].transpose(1, 2, 0))
            success, done = env.step(action)
            if rewards is not None:
                rewards.append(env.reward)
            if done:
                break
    return success, env.steps


_POLICY: Policy | None = None
_ENVS: dict[str, TaskEnv] = {}


def _job(cfg: EvalConfig, job: tuple[str, Perturbation | Scene, int]) -> EpisodeResult:
    task, pert, ep = job
    if task not in _ENVS:
        _ENVS[task] = make_env(task, cfg.sim)
    seed = episode_seed(cfg.seed, task, ep)
    frames: list[np.ndarray] | None = [] if ep < cfg.videos and cfg.video_dir else None
    rewards: list[float] = []
    success, length = run_episode(_ENVS[task], _POLICY, seed, pert, cfg.execute, frames, rewards)
    video = None
    if frames:
        video = str(write_video(frames, Path(cfg.video_dir) / f"{task}_{pert.label.replace(':', '-')}_{ep}.gif"))
    return EpisodeResult(task, pert.label, ep, seed, success, length, video, sum_reward=float(sum(rewards)),
                         max_reward=float(max(rewards)))


def _worker_init(threads: int) -> None:
    # A forked worker inherits the command's SIGTERM handler, which only raises in the main thread once the
    # signal lands there. Pool.terminate() (every `with Pool` exit) stops workers with SIGTERM; when the kernel
    # delivered it to a worker's other thread (a torch/OpenMP one), a worker blocked on the task queue never woke
    # and the run hung. Workers have nothing to clean up: the default action, die, is right.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def _run_chunk(args: tuple[EvalConfig, list[tuple[str, Perturbation | Scene, int]]]) -> list[EpisodeResult]:
    cfg, jobs = args
    return [_job(cfg, j) for j in jobs]


def evaluate(policy: Policy, cfg: EvalConfig, progress: Callable[[int], None] | None = None) -> EvalResult:
    """Run every (variant, task, episode) job; same results for any `workers`."""
    global _POLICY
    if cfg.episodes < 1:
        raise CapvectorError(f"episodes: expected ≥ 1, found {cfg.episodes}")
    jobs = [(t, p, e) for p in cfg.perturbations for t in cfg.tasks for e in range(cfg.episodes)]
    _POLICY = policy
    start = time.perf_counter()
    results: list[EpisodeResult] = []
    try:
        if cfg.workers <= 1:
            for j in jobs:
                results.append(_job(cfg, j))
                if progress:
                    progress(1)
        else:
            # Contiguous groups (jobs are ordered variant → task → episode) so each worker builds few envs
            # (~0.4 s each, as much as a rollout); two groups per worker keep the load roughly balanced.
            size = -(-len(jobs) // (2 * cfg.workers))
            groups = [jobs[i:i + size] for i in range(0, len(jobs), size)]
            ctx = mp.get_context("fork")
            with ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(1,)) as pool:
                for chunk in pool.imap(_run_chunk, [(cfg, g) for g in groups]):
                    results.extend(chunk)
                    if progress:
                        progress(len(chunk))
    finally:
        _POLICY = None
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
    config = asdict(cfg) | {"perturbations": [p.label for p in cfg.perturbations]}
    return EvalResult(config=config, episodes=results, seconds=time.perf_counter() - start)


def write_video(frames: list[np.ndarray], path: Path) -> Path:
    """GIF (or MP4 when the suffix is .mp4 and an ffmpeg plugin is present), written atomically."""
    import imageio.v2 as imageio

    with atomic_file(path) as tmp:
        if path.suffix == ".mp4":
            imageio.mimwrite(tmp, frames, fps=20)
        else:
            imageio.mimwrite(tmp, frames, duration=50, loop=0)
    return path
