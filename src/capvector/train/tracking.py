"""Metrics to experiment trackers through accelerate (TensorBoard, Weights & Biases, Trackio, ...), beside
metrics.jsonl, which is always written and stays the record the tests and reports read.

Names are accelerate's (`log_with` of `Accelerator`); accelerate itself drops a tracker whose package is missing
with only a debug message, so a run would log nowhere without saying so; here that is an error naming the
package. Trackers are finished at the end of `Trainer.train`, but not through `Accelerator.end_training`, which
also destroys the process group: a caller may go on using it (evaluate, train again) after training.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from capvector.errors import CapvectorError

log = logging.getLogger("capvector")


def tracker_names(log_with: str | list[str] | None) -> list[str]:
    """`log_with` as a list, every name one accelerate knows (its built-ins, "all", or a registered class)."""
    names = [] if log_with is None else [log_with] if isinstance(log_with, str) else list(log_with)
    known = sorted({t.value for t in LoggerType} | set(LOGGER_TYPE_TO_CLASS))
    for name in names:
        if name not in known:
            raise CapvectorError(f"train config: log_with {name!r} is not a tracker accelerate knows; "
                                 f"choose from {known}")
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name in {t.value for t in LoggerType} - {"all"} and name not in available:
            raise CapvectorError(f"train config: log_with {name!r} needs its package, which is not installed: "
                                 f"pip install {name.replace('_', '-')}")
    if "all" in names and not available:
        log.warning("log_with 'all': no tracker package is installed; metrics go to metrics.jsonl only")
    return names


def make_accelerator(cpu: bool, log_with: str | list[str] | None, logging_dir: Path) -> Accelerator:
    """The trainer's Accelerator; without trackers it is built exactly as before they existed."""
    names = tracker_names(log_with)
    if not names:
        return Accelerator(cpu=cpu)
    return Accelerator(cpu=cpu, log_with=names, project_config=ProjectConfiguration(
        project_dir=str(logging_dir), logging_dir=str(logging_dir)))


@contextmanager
def tracking(accelerator: Accelerator, project: str, config: dict[str, Any]) -> Iterator[None]:
    """Start the accelerator's trackers with the run's config for the duration of a training call."""
    if not accelerator.log_with:
        yield
        return
    accelerator.init_trackers(project, config=_flat(config))
    try:
        yield
    finally:
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers.clear()


def log_metrics(accelerator: Accelerator, record: dict[str, Any]) -> None:
    """One metrics.jsonl record to the trackers: its numbers, at its step (grad_norm is None without clipping)."""
    if accelerator.trackers:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float) and
                  not isinstance(v, bool) and math.isfinite(v)}
        accelerator.log(values, step=record["step"])


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker configs take scalars (TensorBoard's hparams refuse lists and None): anything else as JSON text."""
    return {k: v if isinstance(v, bool | int | float | str) else json.dumps(v) for k, v in config.items()}
