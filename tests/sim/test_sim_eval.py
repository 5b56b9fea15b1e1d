"""Scripted experts through the Policy interface; evaluator parallel == sequential; Wilson intervals."""

import math
from pathlib import Path

import numpy as np
import pytest

from capvector.errors import CapvectorError
from capvector.sim import Perturbation, Policy, ScriptedExpert, SimConfig
from capvector.sim.evaluate import EvalConfig, evaluate
from capvector.sim.tasks import SPLITS, split_tasks
from capvector.stats import newcombe_difference, wilson_interval

SIM = SimConfig(image_size=32)


def test_expert_implements_policy_and_solves_tasks():
    assert isinstance(ScriptedExpert(), Policy)
    tasks = ("reach-v3", "door-close-v3", "button-press-v3")
    res = evaluate(ScriptedExpert(), EvalConfig(tasks=tasks, episodes=2, sim=SIM)).summary()
    assert res["overall"]["pc_success"] == 100.0
    assert all(10 < e["length"] < 150 for e in res["episodes"])


@pytest.mark.long
def test_parallel_equals_sequential():
    cfg = dict(tasks=("reach-v3", "push-v3"), episodes=2, sim=SIM, seed=3,
               perturbations=(Perturbation(), Perturbation("init_noise", 1.0)))
    seq = evaluate(ScriptedExpert(), EvalConfig(workers=1, **cfg))
    par = evaluate(ScriptedExpert(), EvalConfig(workers=2, **cfg))
    assert [vars(e) for e in seq.episodes] == [vars(e) for e in par.episodes]
    assert len(seq.episodes) == 8


class _Open:
    """A chunked policy that moves up and never closes: fails reach, exercises chunk execution."""

    def __init__(self, shape=(8, 4)):
        self.shape, self.calls = shape, 0

    def reset(self):
        pass

    def act(self, observation):
        assert observation["image"].dtype == np.uint8 and observation["proprio"].shape == (4,)
        self.calls += 1
        out = np.zeros(self.shape, dtype=np.float32)
        out[..., 2] = 1.0
        return out


def test_chunks_run_open_loop_and_failures_count():
    pol = _Open()
    sim = SimConfig(image_size=32, max_steps=40)
    res = evaluate(pol, EvalConfig(tasks=("reach-v3",), episodes=1, sim=sim, execute=4)).summary()
    assert res["overall"]["n_success"] == 0 and res["episodes"][0]["length"] == 40
    assert pol.calls == 10  # 40 steps / 4 executed per query


def test_bad_chunk_shape_is_reported():
    with pytest.raises(CapvectorError, match=r"\(K, 4\), found shape \(1, 3\)"):
        evaluate(_Open((1, 3)), EvalConfig(tasks=("reach-v3",), episodes=1, sim=SIM))


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (3, 7), (40, 50)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    z = 1.959964
    p_hat = k / n
    for p in wilson_interval(k, n):
        if 0 < p < 1:  # the score equation (p̂ − p)² = z² p (1 − p) / n holds at both ends
            assert math.isclose((p_hat - p) ** 2, z * z * p * (1 - p) / n, rel_tol=1e-6, abs_tol=1e-12)
    lo, hi = wilson_interval(k, n)
    assert lo <= p_hat <= hi


@pytest.mark.parametrize("k1,n1,k2,n2,low,high", [
    (56, 70, 48, 80, 0.0524, 0.3339),  # Newcombe (1998), Stat. Med. 17:873, Table II, example (a), method 10
    (9, 10, 3, 10, 0.1705, 0.8090),  # ibid., example (b)
])
def test_newcombe_difference_matches_published_examples(k1, n1, k2, n2, low, high):
    d, lo, hi = newcombe_difference(k1, n1, k2, n2)
    assert math.isclose(d, k1 / n1 - k2 / n2)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_newcombe_difference_stays_in_range_at_the_extremes():
    d, lo, hi = newcombe_difference(10, 10, 0, 10)
    assert d == 1.0 and 0 < lo < 1 and hi == 1.0


def test_splits_are_disjoint_and_parse():
    seen = [t for s in SPLITS.values() for t in s]
    assert len(seen) == len(set(seen))
    assert split_tasks("down@v1") == list(SPLITS["down"])
    with pytest.raises(CapvectorError, match="unknown"):
        split_tasks("nope")


def test_eval_info_has_lerobots_shape_and_metaworlds_rewards(tmp_path):
    from capvector.sim import SimEnv
    from capvector.sim.evaluate import episode_seed

    sim = SimConfig(image_size=32, max_steps=12)
    cfg = EvalConfig(tasks=("reach-v3", "push-v3"), episodes=2, sim=sim, seed=5, videos=1, video_dir=str(tmp_path),
                     perturbations=(Perturbation(), Perturbation("init_noise", 1.0)))
    res = evaluate(_Open(), cfg).summary()
    overall = res["overall"]
    assert {"avg_sum_reward", "avg_max_reward", "pc_success", "n_episodes", "eval_s", "eval_ep_s",
            "video_paths", "ci95"} <= set(overall)
    assert len(overall["video_paths"]) == 4 and all(Path(p).is_file() for p in overall["video_paths"])
    assert [(t["task_group"], t["task_id"]) for t in res["per_task"]] == [("none", 0), ("none", 1),
                                                                           ("init_noise:1", 0), ("init_noise:1", 1)]
    assert res["per_group"] == res["per_variant"] and set(res["per_group"]) == {"none", "init_noise:1"}

    # Every episode's rewards against MetaWorld's own, stepped by hand with the same seed and actions.
    env = SimEnv("reach-v3", sim)
    try:
        for ep in range(2):
            env.reset(episode_seed(5, "reach-v3", ep))
            action = _Open().act({"image": np.zeros(1, np.uint8), "proprio": np.zeros(4)})[0]
            rewards = [float(env.mw.step(action)[1]) for _ in range(12)]
            entry = res["per_task"][0]
            assert entry["metrics"]["sum_rewards"][ep] == pytest.approx(sum(rewards), rel=1e-6)
            assert entry["metrics"]["max_rewards"][ep] == pytest.approx(max(rewards), rel=1e-6)
    finally:
        env.close()
    first = res["per_task"][0]
    assert first["metrics"]["successes"] == [False, False] and len(first["metrics"]["video_paths"]) == 1
    assert first["avg_sum_reward"] == pytest.approx(np.mean(first["metrics"]["sum_rewards"]))
    all_sums = [s for t in res["per_task"] for s in t["metrics"]["sum_rewards"]]
    assert overall["avg_sum_reward"] == pytest.approx(np.mean(all_sums))


def test_rollout_workers_die_on_sigterm_whatever_the_command_installed():
    """Pool.terminate() stops workers with SIGTERM; the command's unwinding handler, inherited by fork, could leave
    a worker blocked on the task queue forever (a hung demo), so workers reset SIGTERM to its default."""
    import signal

    from capvector.sim.evaluate import _worker_init

    def unwinding_handler(signum, frame):  # what `capvector` installs while a command runs
        raise RuntimeError("unwind")

    previous = signal.signal(signal.SIGTERM, unwinding_handler)
    try:
        _worker_init(1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
