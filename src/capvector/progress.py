"""The one progress bar (rich) for long work: bytes streamed by extract / merge, steps of training, episodes of
collection. Transient, and nothing at all when disabled."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ProgressBar:
    """One labelled task, used as a context manager; counts bytes (size and speed) or items (done / total, plus a
    free-text `info` such as the current loss)."""

    def __init__(self, label: str, total: int, *, completed: int = 0, unit: str = "items",
                 enabled: bool = True) -> None:
        if unit not in ("items", "bytes"):
            raise ValueError(f"unit must be 'items' or 'bytes', found {unit!r}")
        counts: tuple[ProgressColumn, ...] = ((DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else
                                              (MofNCompleteColumn(), TextColumn("{task.fields[info]}")))
        self._progress = (Progress(TextColumn("[bold]{task.description}"), BarColumn(), *counts,
                                   TimeRemainingColumn(), transient=True) if enabled else None)
        self._start = {"description": label, "total": total, "completed": completed, "info": ""}
        self._task = None

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(**self._start)
        return self

    def advance(self, amount: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def update(self, *, completed: int | None = None, label: str | None = None, info: str | None = None) -> None:
        """Set what is given: the count done, the label, the info text."""
        if self._progress is not None and self._task is not None:
            given = {"completed": completed, "description": label, "info": info}
            self._progress.update(self._task, **{k: v for k, v in given.items() if v is not None})

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
