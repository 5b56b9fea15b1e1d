"""Pipeline wall time one stage at a time against two side by side (`jobs`), in the same run on the same machine.

Runs the quick demo from an empty directory with jobs = 1 and jobs = 2, as shipped (training 1 thread, rollouts
2 workers) and with 1-worker rollouts (every stage one core, the shape of the study configs). Quick-mode stages
last seconds, so this is the worst case for the per-stage bookkeeping; the findings must come out identical.

    python benchmarks/pipeline_jobs.py [--json benchmarks/results/pipeline_jobs.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import capvector.sim  # noqa: F401  (sets MUJOCO_GL=osmesa before mujoco loads)
from capvector.io.atomic import atomic_write_text
from capvector.pipeline import PipelineConfig, run_pipeline


def timed_run(workers: int, jobs: int) -> tuple[float, list]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PipelineConfig.for_mode("quick", workers=workers, jobs=jobs)
        t0 = time.perf_counter()
        results = run_pipeline(cfg, tmp, log=lambda s: None)
        return time.perf_counter() - t0, results["findings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = []
    for workers in (2, 1):
        one, findings_one = timed_run(workers, 1)
        two, findings_two = timed_run(workers, 2)
        row = {"rollout_workers": workers, "jobs1_s": round(one, 1), "jobs2_s": round(two, 1),
               "speedup": round(one / two, 2), "same_findings": findings_one == findings_two}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        record = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count(), "rows": rows}
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
