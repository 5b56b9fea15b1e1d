"""Progress bars for long streaming work (rich), silent when disabled or not on a terminal."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ByteProgress:
    """A byte-counting progress bar used as a context manager."""

    def __init__(self, label: str, total_bytes: int, enabled: bool = True) -> None:
        self._progress = (
            Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            if enabled
            else None
        )
        self._total = total_bytes
        self._task = None

    def __enter__(self) -> ByteProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("", total=self._total)
        return self

    def advance(self, nbytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, nbytes)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
