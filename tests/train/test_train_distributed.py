"""Two CPU processes (gloo, launched by torchrun, driven by accelerate) follow the same loss curve as one, also when
the two-process run is stopped after a checkpoint and resumed (accelerate save_state/load_state, per-rank RNG).
The one-process reference runs in the test's process (one thread, as tests/conftest.py sets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from test_train_distributed import train
    train(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
""")


def train(output_dir: str, stop_at: int | None = None) -> None:
    """The run both sides make: 4 steps with alignment, a checkpoint every 2 (one thread, as the tests set)."""
    from capvector.policy import PolicyConfig
    from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer

    cfg = TrainConfig(output_dir=output_dir, steps=4, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1,
                      progress=False, seed=1, aux_weight=0.5, aux_layer=1, checkpoint_every=2)
    Trainer(cfg, SyntheticDemoDataset(length=32, chunk=4),
            policy_config=PolicyConfig(width=32, depth=2, heads=2, embedder="hash", chunk=4)).train(stop_at=stop_at)


def _curve(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["action_l1"], r["align"]) for r in rows]


@pytest.mark.long
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    train(str(tmp_path / "one"))  # the one-process reference runs here: only the two-process run needs processes
    tests = str(Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)}
    for stop_at in (["2"], []):  # stopped after the step-2 checkpoint, then resumed to the end
        # --standalone: torchrun binds its own free port (a port chosen here could be taken before it binds)
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(script),
                              str(tmp_path / "two"), *stop_at], env=env, capture_output=True, text=True, timeout=120)
        assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "two" / "checkpoints" / "step_0000002" / "random_states_1.pkl").is_file()
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
    c1, c2 = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert [r[0] for r in c1] == [r[0] for r in c2] == [1, 2, 3, 4]
    for a, b in zip(c1, c2, strict=True):
        assert a[1:] == pytest.approx(b[1:], rel=1e-4, abs=1e-5)
    from capvector.policy import load_policy

    w1 = load_policy(tmp_path / "one" / "policy").state_dict()
    w2 = load_policy(tmp_path / "two" / "policy").state_dict()
    for k, v in w1.items():
        torch.testing.assert_close(w2[k], v, rtol=1e-4, atol=1e-5, msg=k)
