"""Cached, resumable stages: each stage owns a directory and is done when its marker still matches.

A stage is *done* when `<dir>/.stage.json` names the stage's current fingerprint (a hash of its
parameters and of its dependencies' fingerprints) and every file it recorded still has the recorded
size and sha256. Anything else means the stage runs again:

- no marker, same fingerprint started before (`.stage-started.json`): an interrupted run. Stages that
  resume by themselves (training, data collection) continue in place; the others start from an empty
  directory.
- a marker whose files no longer match (a corrupted or edited output), or another fingerprint (the
  recipe changed): the directory is emptied and the stage runs from scratch.

A stage's dependants are fingerprinted from its fingerprint, so changing one parameter redoes exactly
the stages downstream of it.

With `jobs` > 1, stages whose dependencies are done run side by side in `jobs` worker processes, as long as
their declared `cores` fit in `jobs`; each one's output goes to `logs/<stage>.log` under the run. Bookkeeping
(markers, hashes) stays in the calling process, so a run's markers are the same whichever way it ran.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_write_text
from capvector.io.hashing import file_sha256

MARKER = ".stage.json"
STARTED = ".stage-started.json"
STAGE_FORMAT = 1


@dataclass
class Stage:
    """One unit of cached work. `run(directory)` writes its outputs there and returns a JSON-able summary."""

    name: str  # unique; also the directory, relative to the run's `stages/` (may contain '/')
    run: Callable[[Path], dict[str, Any] | None]
    params: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    resumable: bool = False
    label: str = ""  # what the progress line shows; defaults to the name
    cores: int = 1  # CPU cores the stage keeps busy: what it counts for against `StageRunner.run`'s `jobs`

    def __post_init__(self) -> None:
        self.label = self.label or self.name


@dataclass
class StageOutcome:
    name: str
    status: str  # "cached" | "ran" | "resumed"
    seconds: float
    summary: dict[str, Any]


def _output_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in (MARKER, STARTED))


class StageRunner:
    """Runs stages in order under `root/stages/`, skipping those already done with the same fingerprint."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log
        self.fingerprints: dict[str, str] = {}
        self.outcomes: dict[str, StageOutcome] = {}

    def directory(self, name: str) -> Path:
        return self.root / "stages" / name

    def fingerprint(self, stage: Stage) -> str:
        missing = [d for d in stage.deps if d not in self.fingerprints]
        if missing:
            raise CapvectorError(f"stage {stage.name!r} depends on {missing}, which have not been declared before it")
        blob = json.dumps({"format": STAGE_FORMAT, "name": stage.name, "params": stage.params,
                           "deps": {d: self.fingerprints[d] for d in stage.deps}}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def check(self, stage: Stage, fingerprint: str) -> tuple[bool, str]:
        """(done, reason it is not): the marker's fingerprint and every recorded file's size and hash."""
        marker = self.directory(stage.name) / MARKER
        if not marker.is_file():
            return False, "not run"
        try:
            record = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return False, "unreadable marker"
        if record.get("fingerprint") != fingerprint:
            return False, "recipe changed"
        directory = self.directory(stage.name)
        files = record.get("files", {})
        for rel, meta in files.items():
            path = directory / rel
            if not path.is_file() or path.stat().st_size != meta["bytes"] or file_sha256(path) != meta["sha256"]:
                return False, f"output {rel} missing or changed"
        if {str(p.relative_to(directory)) for p in _output_files(directory)} - set(files):
            return False, "unrecorded files in the output"
        return True, ""

    def summary(self, name: str) -> dict[str, Any]:
        """The summary a finished stage returned (from this run or read from its marker)."""
        if name in self.outcomes:
            return self.outcomes[name].summary
        marker = self.directory(name) / MARKER
        return json.loads(marker.read_text())["summary"] if marker.is_file() else {}

    def run(self, stages: Iterable[Stage], jobs: int = 1) -> list[StageOutcome]:
        """Run every stage not already done, in declaration order (`jobs` = 1) or side by side (`jobs` cores)."""
        stages = list(stages)
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise CapvectorError(f"duplicate stage names: {sorted({n for n in names if names.count(n) > 1})}")
        if jobs < 1:
            raise CapvectorError(f"jobs must be at least 1, found {jobs}")
        if jobs == 1:
            for i, stage in enumerate(stages, 1):
                fp = self.fingerprint(stage)
                self.fingerprints[stage.name] = fp
                self.outcomes[stage.name] = self._run_one(stage, fp, f"[{i}/{len(stages)}]")
        else:
            self._run_side_by_side(stages, jobs)
        return [self.outcomes[name] for name in names]

    def _run_one(self, stage: Stage, fp: str, position: str) -> StageOutcome:
        done, reason = self.check(stage, fp)
        if done:
            return self._cached(stage, position)
        resume = self._start(stage, fp, reason, position)
        t0 = time.perf_counter()
        summary = stage.run(self.directory(stage.name)) or {}
        return self._finish(stage, fp, summary, time.perf_counter() - t0, resume, position)

    def _run_side_by_side(self, stages: list[Stage], jobs: int) -> None:
        """Start each stage once its dependencies are done and its cores fit beside the running ones (a stage
        wider than `jobs` runs alone). After a failure nothing new starts; the running stages finish (and are
        kept), then the failure is raised."""
        position = {s.name: f"[{i}/{len(stages)}]" for i, s in enumerate(stages, 1)}
        waiting: list[tuple[Stage, str]] = []
        for stage in stages:
            fp = self.fingerprint(stage)
            self.fingerprints[stage.name] = fp
            done, reason = self.check(stage, fp)
            if done:
                self.outcomes[stage.name] = self._cached(stage, position[stage.name])
            else:
                waiting.append((stage, reason))
        running: dict[Future, tuple[Stage, bool, float]] = {}
        failure: BaseException | None = None
        # Worker interpreters are started fresh (nothing of this process's torch state is inherited) and serve stage
        # after stage, as one process serves every stage when `jobs` = 1: a new process per stage cost ≈ 5 CPU s of
        # imports, which doubled the quick demo.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            while True:
                busy = sum(min(s.cores, jobs) for s, _, _ in running.values())
                for item in [] if failure else list(waiting):
                    stage, reason = item
                    width = min(stage.cores, jobs)
                    if any(d not in self.outcomes for d in stage.deps) or (running and busy + width > jobs):
                        continue
                    waiting.remove(item)
                    fp = self.fingerprints[stage.name]
                    resume = self._start(stage, fp, reason, position[stage.name], log=self.log_path(stage.name))
                    future = pool.submit(_run_logged, stage.run, self.directory(stage.name),
                                         self.log_path(stage.name), width)
                    running[future] = (stage, resume, time.perf_counter())
                    busy += width
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage, resume, t0 = running.pop(future)
                    try:
                        summary = future.result()
                    except BaseException as e:  # noqa: BLE001 - re-raised once the running stages are done
                        self.log(f"{position[stage.name]} {stage.label}: failed ({type(e).__name__}: {e}); "
                                 f"its output: {self.log_path(stage.name)}")
                        failure = failure or e
                        continue
                    self.outcomes[stage.name] = self._finish(stage, self.fingerprints[stage.name], summary,
                                                             time.perf_counter() - t0, resume,
                                                             position[stage.name])
        if failure is not None:
            raise failure

    def log_path(self, name: str) -> Path:
        """Where a stage run side by side with others writes its output."""
        return self.root / "logs" / f"{name}.log"

    def _cached(self, stage: Stage, position: str) -> StageOutcome:
        record = json.loads((self.directory(stage.name) / MARKER).read_text())
        self.log(f"{position} {stage.label}: cached ({record['seconds']:.0f} s when it ran)")
        return StageOutcome(stage.name, "cached", 0.0, record["summary"])

    def _start(self, stage: Stage, fp: str, reason: str, position: str, log: Path | None = None) -> bool:
        """Prepare the stage's directory (kept when an interrupted resumable stage continues, else emptied) and
        mark it started; returns whether it resumes."""
        directory = self.directory(stage.name)
        started = directory / STARTED
        resume = (stage.resumable and reason == "not run" and started.is_file()
                  and json.loads(started.read_text()).get("fingerprint") == fp)
        if not resume and directory.exists():
            if reason != "not run" or any(directory.iterdir()):
                self.log(f"{position} {stage.label}: redoing ({reason if reason != 'not run' else 'partial output'})")
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MARKER).unlink(missing_ok=True)
        atomic_write_text(started, json.dumps({"fingerprint": fp}))
        where = f" (output: {log})" if log else ""
        self.log(f"{position} {stage.label}: {'resuming' if resume else 'running'}{where}")
        return resume

    def _finish(self, stage: Stage, fp: str, summary: dict[str, Any], seconds: float, resume: bool,
                position: str) -> StageOutcome:
        """Record the stage's files and summary in its marker: from now on it is done."""
        directory = self.directory(stage.name)
        files = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in _output_files(directory)}
        record = {"format": STAGE_FORMAT, "name": stage.name, "fingerprint": fp, "params": stage.params,
                  "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "summary": summary, "files": files}
        atomic_write_text(directory / MARKER, json.dumps(record, indent=1, default=str) + "\n")
        (directory / STARTED).unlink(missing_ok=True)
        self.log(f"{position} {stage.label}: done in {seconds:.0f} s")
        return StageOutcome(stage.name, "resumed" if resume else "ran", seconds, summary)


def _run_logged(run: Callable[[Path], dict[str, Any] | None], directory: Path, log: Path,
                cores: int) -> dict[str, Any]:
    """A stage body in a worker process: its stdout and stderr go to `log` (so progress bars stay off and
    stages running side by side do not interleave), torch uses the stage's `cores`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    os.environ["OMP_NUM_THREADS"] = str(cores)  # read by torch when a body imports it later
    if "torch" in sys.modules:  # imported while the body was unpickled: its thread pool is sized already
        sys.modules["torch"].set_num_threads(cores)
    try:
        return run(directory) or {}
    except BaseException:
        traceback.print_exc()  # the log keeps the whole story; the caller gets the exception itself
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
