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
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
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

    def run(self, stages: Iterable[Stage]) -> list[StageOutcome]:
        stages = list(stages)
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise CapvectorError(f"duplicate stage names: {sorted({n for n in names if names.count(n) > 1})}")
        results = []
        for i, stage in enumerate(stages, 1):
            fp = self.fingerprint(stage)
            self.fingerprints[stage.name] = fp
            outcome = self._run_one(stage, fp, f"[{i}/{len(stages)}]")
            self.outcomes[stage.name] = outcome
            results.append(outcome)
        return results

    def _run_one(self, stage: Stage, fp: str, position: str) -> StageOutcome:
        directory = self.directory(stage.name)
        label = stage.label or stage.name
        done, reason = self.check(stage, fp)
        if done:
            record = json.loads((directory / MARKER).read_text())
            self.log(f"{position} {label}: cached ({record['seconds']:.0f} s when it ran)")
            return StageOutcome(stage.name, "cached", 0.0, record["summary"])
        started = directory / STARTED
        resume = (stage.resumable and reason == "not run" and started.is_file()
                  and json.loads(started.read_text()).get("fingerprint") == fp)
        if not resume and directory.exists():
            if reason != "not run" or any(directory.iterdir()):
                self.log(f"{position} {label}: redoing ({reason if reason != 'not run' else 'partial output'})")
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MARKER).unlink(missing_ok=True)
        atomic_write_text(started, json.dumps({"fingerprint": fp}))
        self.log(f"{position} {label}: {'resuming' if resume else 'running'}")
        t0 = time.perf_counter()
        summary = stage.run(directory) or {}
        seconds = time.perf_counter() - t0
        files = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in _output_files(directory)}
        record = {"format": STAGE_FORMAT, "name": stage.name, "fingerprint": fp, "params": stage.params,
                  "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "summary": summary, "files": files}
        atomic_write_text(directory / MARKER, json.dumps(record, indent=1, default=str) + "\n")
        started.unlink(missing_ok=True)
        self.log(f"{position} {label}: done in {seconds:.0f} s")
        return StageOutcome(stage.name, "resumed" if resume else "ran", seconds, summary)
