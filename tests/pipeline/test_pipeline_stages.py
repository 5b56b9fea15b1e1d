"""StageRunner: caching by fingerprint, redo on changed parameters / corrupted or partial outputs, kill and resume."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from capvector.errors import CapvectorError
from capvector.pipeline.stages import MARKER, Stage, StageRunner


class Writer:
    """A stage body that writes `value` to out.txt and counts its calls."""

    def __init__(self, value: str, fail: bool = False) -> None:
        self.value, self.fail, self.calls = value, fail, 0

    def __call__(self, directory: Path) -> dict:
        self.calls += 1
        (directory / "out.txt").write_text(self.value)
        if self.fail:
            raise RuntimeError("interrupted")
        return {"value": self.value}


def _graph(a: Writer, b: Writer, a_params: dict | None = None) -> list[Stage]:
    return [Stage("a", a, a_params or {"v": 1}), Stage("b/sub", b, {"v": 2}, deps=("a",))]


def test_second_run_is_cached_and_summaries_survive(tmp_path):
    a, b = Writer("x"), Writer("y")
    first = StageRunner(tmp_path, log=lambda s: None).run(_graph(a, b))
    assert [o.status for o in first] == ["ran", "ran"]
    runner = StageRunner(tmp_path, log=lambda s: None)
    second = runner.run(_graph(a, b))
    assert [o.status for o in second] == ["cached", "cached"] and (a.calls, b.calls) == (1, 1)
    assert runner.summary("b/sub") == {"value": "y"}
    record = json.loads((tmp_path / "stages" / "b" / "sub" / MARKER).read_text())
    assert record["files"]["out.txt"]["bytes"] == 1


def test_changed_parameters_redo_the_stage_and_its_dependants_only(tmp_path):
    a, b, c = Writer("x"), Writer("y"), Writer("z")
    stages = [*_graph(a, b), Stage("c", c, {"v": 3})]
    StageRunner(tmp_path, log=lambda s: None).run(stages)
    changed = [*_graph(a, b, {"v": 99}), Stage("c", c, {"v": 3})]
    out = StageRunner(tmp_path, log=lambda s: None).run(changed)
    assert [o.status for o in out] == ["ran", "ran", "cached"]
    assert (a.calls, b.calls, c.calls) == (2, 2, 1)


@pytest.mark.parametrize("damage", ["edit", "delete", "extra"])
def test_corrupted_output_is_detected_and_redone(tmp_path, damage):
    a, b = Writer("x"), Writer("y")
    StageRunner(tmp_path, log=lambda s: None).run(_graph(a, b))
    target = tmp_path / "stages" / "a" / "out.txt"
    if damage == "edit":
        target.write_text("X")  # same size, different content
    elif damage == "delete":
        target.unlink()
    else:
        (target.parent / "stray.bin").write_bytes(b"??")
    logs: list[str] = []
    out = StageRunner(tmp_path, log=logs.append).run(_graph(a, b))
    assert [o.status for o in out] == ["ran", "cached"] and a.calls == 2
    assert target.read_text() == "x" and not (target.parent / "stray.bin").exists()
    assert any("redoing" in line for line in logs)


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    broken = Writer("x", fail=True)
    with pytest.raises(RuntimeError):
        StageRunner(tmp_path, log=lambda s: None).run([Stage("a", broken, {"v": 1})])
    assert not (tmp_path / "stages" / "a" / MARKER).exists()
    fixed = Writer("x")
    out = StageRunner(tmp_path, log=lambda s: None).run([Stage("a", fixed, {"v": 1})])
    assert out[0].status == "ran" and fixed.calls == 1


def test_resumable_stage_continues_in_place(tmp_path):
    seen: list[bool] = []

    def body(directory: Path) -> dict:
        seen.append((directory / "progress").exists())
        (directory / "progress").write_text("half")
        if len(seen) == 1:
            raise KeyboardInterrupt
        return {}

    stage = Stage("train", body, {"v": 1}, resumable=True)
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, log=lambda s: None).run([stage])
    out = StageRunner(tmp_path, log=lambda s: None).run([stage])
    assert out[0].status == "resumed" and seen == [False, True]


def test_declaration_errors_are_clear(tmp_path):
    with pytest.raises(CapvectorError, match="depends on"):
        StageRunner(tmp_path).run([Stage("b", Writer("y"), deps=("a",))])
    with pytest.raises(CapvectorError, match="duplicate stage names"):
        StageRunner(tmp_path).run([Stage("a", Writer("x")), Stage("a", Writer("x"))])


def test_sigkill_mid_stage_then_rerun_completes(tmp_path, monkeypatch):
    """A process killed inside a stage leaves no marker; the next run (here, in this process) redoes that stage and
    keeps the others."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from capvector.pipeline.stages import Stage, StageRunner

        def quick(d):
            (d / "done.txt").write_text("ok")

        def slow(d):
            (d / "partial.txt").write_text("half")
            if sys.argv[1] == "hang":
                Path({str(tmp_path / "ready")!r}).write_text("1")
                time.sleep(600)
            (d / "partial.txt").write_text("full")

        StageRunner({str(tmp_path / "run")!r}, log=lambda s: None).run(
            [Stage("first", quick, {{}}), Stage("second", slow, {{}}, deps=("first",))])
    """))
    proc = subprocess.Popen([sys.executable, str(script), "hang"])
    deadline = time.time() + 120
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.time() < deadline, "job did not reach the slow stage"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    second = tmp_path / "run" / "stages" / "second"
    assert (second / "partial.txt").read_text() == "half" and not (second / MARKER).exists()
    first_marker = (tmp_path / "run" / "stages" / "first" / MARKER).read_text()
    monkeypatch.setattr(sys, "argv", [str(script), "finish"])
    runpy.run_path(str(script), run_name="__main__")
    assert (second / "partial.txt").read_text() == "full" and (second / MARKER).is_file()
    assert (tmp_path / "run" / "stages" / "first" / MARKER).read_text() == first_marker  # cached, not redone


# ---- side by side (jobs > 1): bodies must pickle, so they are module-level classes ----------------------------

class Rendezvous:
    """Marks itself started, then waits for the others: it finishes only when they all run at the same time."""

    def __init__(self, flags: Path, name: str, others: tuple[str, ...]) -> None:
        self.flags, self.name, self.others = flags, name, others

    def __call__(self, directory: Path) -> dict:
        (self.flags / self.name).write_text(str(os.getpid()))
        deadline = time.time() + 60
        while not all((self.flags / o).exists() for o in self.others):
            if time.time() > deadline:
                raise RuntimeError(f"{self.name} ran alone")
            time.sleep(0.05)
        print(f"{self.name} met {', '.join(self.others)}")
        (directory / "out.txt").write_text(self.name)
        return {"pid": os.getpid()}


class Exclusive:
    """Fails when another Exclusive body holds the lock file while it runs."""

    def __init__(self, lock: Path) -> None:
        self.lock = lock

    def __call__(self, directory: Path) -> dict:
        fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # FileExistsError: two ran at once
        time.sleep(0.5)
        os.close(fd)
        os.unlink(self.lock)
        (directory / "out.txt").write_text("alone")
        return {}


class CopyFrom:
    """Copies its dependency's out.txt: it must run after the dependency finished."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def __call__(self, directory: Path) -> dict:
        (directory / "out.txt").write_text(self.source.read_text() + "+")
        return {}


def test_side_by_side_runs_ready_stages_at_once_in_their_own_processes(tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    run = tmp_path / "run"
    stages = [Stage("a", Rendezvous(flags, "a", ("b",)), {"v": 1}),
              Stage("b/sub", Rendezvous(flags, "b", ("a",)), {"v": 2}),
              Stage("c", CopyFrom(run / "stages" / "a" / "out.txt"), {"v": 3}, deps=("a",))]
    logs: list[str] = []
    out = StageRunner(run, log=logs.append).run(stages, jobs=2)
    assert [o.status for o in out] == ["ran", "ran", "ran"]
    assert len({out[0].summary["pid"], out[1].summary["pid"], os.getpid()}) == 3
    assert (run / "stages" / "c" / "out.txt").read_text() == "a+"
    assert (run / "logs" / "a.log").read_text() == "a met b\n"
    assert any(line.endswith(f"b/sub: running (output: {run / 'logs' / 'b' / 'sub.log'})") for line in logs)
    # the markers are the ones a one-at-a-time run checks: everything is cached
    again = StageRunner(run, log=lambda s: None).run(stages)
    assert [o.status for o in again] == ["cached"] * 3 and again[0].summary == out[0].summary


def test_side_by_side_keeps_to_the_cores(tmp_path):
    lock = tmp_path / "lock"
    stages = [Stage("a", Exclusive(lock), {}, cores=2), Stage("b", Exclusive(lock), {}, cores=1),
              Stage("c", Exclusive(lock), {}, cores=5)]  # c is wider than jobs: it runs alone
    out = StageRunner(tmp_path / "run", log=lambda s: None).run(stages, jobs=2)
    assert [o.status for o in out] == ["ran"] * 3


def test_side_by_side_failure_keeps_finished_stages_and_starts_nothing_after(tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    run = tmp_path / "run"
    stages = [Stage("a", Writer("x", fail=True), {"v": 1}),
              Stage("b", Rendezvous(flags, "b", ()), {"v": 2}),
              Stage("c", CopyFrom(run / "stages" / "a" / "out.txt"), {"v": 3}, deps=("a",))]
    logs: list[str] = []
    with pytest.raises(RuntimeError, match="interrupted"):
        StageRunner(run, log=logs.append).run(stages, jobs=2)
    assert (run / "stages" / "b" / MARKER).is_file()
    assert not (run / "stages" / "a" / MARKER).exists() and not (run / "stages" / "c").exists()
    assert any("a: failed (RuntimeError: interrupted)" in line for line in logs)
    assert "Traceback" in (run / "logs" / "a.log").read_text()
    stages[0] = Stage("a", Writer("x"), {"v": 1})
    out = StageRunner(run, log=lambda s: None).run(stages, jobs=2)
    assert [o.status for o in out] == ["ran", "cached", "ran"]


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(CapvectorError, match="jobs must be at least 1, found 0"):
        StageRunner(tmp_path).run([Stage("a", Writer("x"))], jobs=0)


class TinyTraining:
    """20 single-threaded steps of a tiny VLA on synthetic demos."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, directory: Path) -> dict:
        from capvector.train import SyntheticDemoDataset, TrainConfig
        from capvector.train.run import run_training
        from testing_common import small_config

        cfg = TrainConfig(output_dir=str(directory), steps=20, batch_size=8, lr=3e-3, warmup_steps=2, seed=self.seed,
                          threads=1, log_every=10, progress=False)
        run_training(cfg, SyntheticDemoDataset(length=32, chunk=4, seed=3, episode_len=8), policy_config=small_config())
        return {}


def test_training_beside_another_gives_the_weights_of_training_alone(tmp_path):
    def weights(run: Path) -> dict:
        files = json.loads((run / "stages" / "s0" / MARKER).read_text())["files"]
        return {k: v["sha256"] for k, v in files.items() if k.endswith(".safetensors")}

    alone = StageRunner(tmp_path / "alone", log=lambda s: None)
    alone.run([Stage("s0", TinyTraining(0), {"seed": 0})])
    beside = StageRunner(tmp_path / "beside", log=lambda s: None)
    beside.run([Stage("s0", TinyTraining(0), {"seed": 0}), Stage("s1", TinyTraining(1), {"seed": 1})], jobs=2)
    assert weights(tmp_path / "alone") and weights(tmp_path / "alone") == weights(tmp_path / "beside")
