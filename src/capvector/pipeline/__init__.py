"""The end-to-end CapVector demo: cached stages (`stages`), the recipe graph (`recipe`), results and report.

    from capvector.pipeline import PipelineConfig, run_pipeline
    run_pipeline(PipelineConfig.for_mode("quick"), "runs/demo-quick")

A run directory holds `pipeline.json` (the resolved config), `stages/` (one directory per stage, each with
its `.stage.json` marker), `results.json`, `report.md`, the plots and `videos/`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_write_text
from capvector.pipeline.config import MODES, PipelineConfig
from capvector.pipeline.recipe import DemoGraph
from capvector.pipeline.report import write_report
from capvector.pipeline.results import ResultsBuilder, write_results
from capvector.pipeline.stages import Stage, StageRunner

CONFIG_FILE = "pipeline.json"

__all__ = ["MODES", "PipelineConfig", "Stage", "StageRunner", "regenerate_report", "run_pipeline"]


def run_pipeline(cfg: PipelineConfig, run_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every stage of the demo, then write results.json, report.md and the plots."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=1) + "\n")
    graph = DemoGraph(cfg, run_dir)
    t0 = time.perf_counter()
    outcomes = StageRunner(run_dir, log=log).run(graph.stages, jobs=cfg.jobs)
    ran_s = time.perf_counter() - t0
    stage_s = sum(_stage_seconds(graph, s.name) for s in graph.stages)
    log(f"stages: {sum(o.status != 'cached' for o in outcomes)} ran, {sum(o.status == 'cached' for o in outcomes)} "
        f"cached; {ran_s / 60:.1f} min now, {stage_s / 60:.1f} min of stage work in total")
    return _report(graph, run_dir, stage_s)


def regenerate_report(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild results.json, report.md and the plots from a finished run's stages (`capvector report`)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CapvectorError(f"{run_dir}: not a demo run directory (no {CONFIG_FILE})")
    data = json.loads(path.read_text())
    data.setdefault("orth_control", True)  # runs recorded before the field existed always ran the control
    cfg = PipelineConfig.for_mode(data.pop("mode"), **data)
    graph = DemoGraph(cfg, run_dir)
    runner = StageRunner(run_dir)
    for stage in graph.stages:
        fp = runner.fingerprint(stage)
        runner.fingerprints[stage.name] = fp
        done, reason = runner.check(stage, fp)
        if not done:
            raise CapvectorError(f"{run_dir}: stage {stage.name} is not finished ({reason}); rerun the pipeline first")
    return _report(graph, run_dir, sum(_stage_seconds(graph, s.name) for s in graph.stages))


def _stage_seconds(graph: DemoGraph, name: str) -> float:
    marker = graph.dir(name) / ".stage.json"
    return json.loads(marker.read_text())["seconds"] if marker.is_file() else 0.0


def _report(graph: DemoGraph, run_dir: Path, total_s: float) -> dict[str, Any]:
    results = json.loads(json.dumps(ResultsBuilder(graph).build(total_s=total_s)))  # as results.json holds it
    videos = _gather_videos(graph, run_dir)
    write_results(results, run_dir / "results.json")
    write_report(results, run_dir, videos)
    return results


def _gather_videos(graph: DemoGraph, run_dir: Path) -> list[str]:
    """Copy the evaluated GIFs next to the report (relative links keep working when the folder moves)."""
    out = run_dir / "videos"
    found = []
    for stage in graph.stages:
        src = graph.dir(stage.name) / "videos"
        if not src.is_dir():
            continue
        prefix = stage.name.removeprefix("eval/").replace("/", "_")
        for gif in sorted(src.glob("*.gif")):
            out.mkdir(exist_ok=True)
            dest = out / f"{prefix}_{gif.name}"
            shutil.copyfile(gif, dest)
            found.append(str(dest.relative_to(run_dir)))
    return found
