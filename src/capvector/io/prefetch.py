"""Reading ahead on a background thread, so disk reads overlap with the arithmetic.

File reads release the GIL, so a reader thread keeps the disk busy while the main thread computes
on the previous chunk. Loaded items hold pooled buffers; the consumer releases them when done, and
an early exit (an exception in the consumer) releases whatever is in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

_DONE = object()


class Prefetcher(Generic[J, R]):
    """Iterate `(job, load(job))` in order, loading up to `depth` jobs ahead on a thread.

    `discard(result)` is called for results that are loaded but never handed to the consumer,
    so pooled buffers they hold go back to their pool.
    """

    def __init__(self, jobs: Iterable[J], load: Callable[[J], R], discard: Callable[[R], None],
                 depth: int = 2) -> None:
        self._jobs = jobs
        self._load = load
        self._discard = discard
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capvector-reader", daemon=True)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for job in self._jobs:
                if self._stop.is_set():
                    return
                result = self._load(job)
                if not self._put((job, result)):
                    self._discard(result)
                    return
        except BaseException as e:  # re-raised in the consumer
            self._put(e)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[J, R]]:
        self._thread.start()
        try:
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            while True:  # release what was loaded but not consumed, unblocking the reader
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    if not self._thread.is_alive():
                        break
                    self._thread.join(timeout=0.05)
                    continue
                if isinstance(item, tuple):
                    self._discard(item[1])
