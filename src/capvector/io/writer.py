"""Writing checkpoints: shard plans written tensor by tensor (into an `io.atomic.AtomicOutputDir`)."""

from __future__ import annotations

import json
import math
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from capvector.errors import CapvectorError
from capvector.io.safetensors_format import StreamingSafetensorsWriter, itemsize

TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]


_SIZE = re.compile(
    r"\s*(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[KMGT]?)(?P<binary>i?)B?\s*",
    flags=re.IGNORECASE,
)


def parse_size(text: str | int) -> int:
    """'5GB', '500MiB', '2e9' or an int -> bytes; at least one byte, finite."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise CapvectorError(f"invalid size {text!r} (examples: 5GB, 500MiB, 2000000000)")
    if isinstance(text, int):
        size = text
    else:
        m = _SIZE.fullmatch(text)
        if not m:
            raise CapvectorError(f"invalid size {text!r} (examples: 5GB, 500MiB, 2000000000)")
        number = float(m["number"])
        if m["binary"] and not m["unit"]:
            raise CapvectorError(f"invalid size {text!r}: 'i' needs a unit, e.g. 500MiB")
        scale = (1024 if m["binary"] else 1000) ** "_KMGT".index(m["unit"].upper() or "_")
        if not math.isfinite(number * scale):
            raise CapvectorError(f"invalid size {text!r}: not a finite number of bytes")
        size = int(number * scale)
    if size < 1:
        raise CapvectorError(f"invalid size {text!r}: a shard must hold at least one byte")
    return size


@dataclass
class ShardPlan:
    """Which tensors go into which file, in write order."""

    shards: dict[str, list[TensorSpec]] = field(default_factory=dict)
    index_name: str | None = None  # written when not None

    def order(self) -> list[str]:
        return [spec[0] for specs in self.shards.values() for spec in specs]


def nbytes(spec: TensorSpec) -> int:
    return math.prod(spec[2]) * itemsize(spec[1])


def plan_resharded(specs: list[TensorSpec], max_shard_bytes: int, stem: str = "model") -> ShardPlan:
    """Pack tensors in order into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        b = nbytes(spec)
        if groups[-1] and size + b > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += b
    if len(groups) == 1:
        return ShardPlan({f"{stem}.safetensors": groups[0]})
    n = len(groups)
    shards = {f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors": g for i, g in enumerate(groups)}
    return ShardPlan(shards, index_name=f"{stem}.safetensors.index.json")


class ShardedWriter:
    """Writes a `ShardPlan` into a directory, tensor chunks arriving in plan order."""

    def __init__(self, directory: Path, plan: ShardPlan, metadata: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.plan = plan
        self.metadata = metadata or {"format": "pt"}
        self._pending = list(plan.shards.items())
        self._current: StreamingSafetensorsWriter | None = None
        self._current_names: set[str] = set()

    def write(self, name: str, flat: torch.Tensor) -> None:
        while self._current is None or name not in self._current_names:
            self._next_shard()
        self._current.write(name, flat)

    def _next_shard(self) -> None:
        if self._current is not None:
            self._current.close()
        if not self._pending:
            raise RuntimeError(f"{self.directory}: no shard left in the plan")
        fname, specs = self._pending.pop(0)
        path = self.directory / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        self._current = StreamingSafetensorsWriter(path, specs, self.metadata)
        self._current_names = {s[0] for s in specs}

    def close(self) -> None:
        while self._pending:  # shards whose tensors are all empty, or a plan with nothing written yet
            self._next_shard()
        if self._current is not None:
            self._current.close()
        if self.plan.index_name is not None:
            weight_map = {spec[0]: fname for fname, specs in self.plan.shards.items() for spec in specs}
            total = sum(nbytes(spec) for specs in self.plan.shards.values() for spec in specs)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / self.plan.index_name).write_text(json.dumps(index, indent=2) + "\n")


class BufferPool:
    """A fixed set of reusable byte buffers passed from the compute thread to the writer thread.

    Fresh multi-MB allocations page-fault on every chunk; recycling a few buffers avoids that and
    bounds memory. The writer returns a buffer to the pool once its bytes are on disk.
    """

    def __init__(self, nbytes: int, count: int = 4) -> None:
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count):
            self._free.put(torch.empty(nbytes, dtype=torch.uint8))

    def acquire(self) -> torch.Tensor:
        return self._free.get()

    def release(self, buf: torch.Tensor, after: Future[None] | None = None) -> None:
        """Return `buf` to the pool; with `after`, only once that future is done (e.g. a hash still reading the
        buffer's bytes on another thread)."""
        if after is not None:
            after.result()
        self._free.put(buf)

    @property
    def free(self) -> int:
        """Buffers currently in the pool (not held by a reader, the compute loop or the writer)."""
        return self._free.qsize()


class BackgroundWriter:
    """Runs a `ShardedWriter` on its own thread so disk writes overlap with the arithmetic.

    At most `depth` chunks wait in the queue, so memory stays bounded; an error on the writer
    thread is raised again in the caller at the next `write` or at `close`.
    """

    def __init__(self, writer: ShardedWriter, depth: int = 2) -> None:
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._aborted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capvector-writer", daemon=True)
        self._thread.start()

    def _next(self) -> tuple | None:
        """The next chunk, or None at the end or on abort. Polls, because a signal raised in the caller while it
        was inside `Queue.put` can lose the wake-up, and an abort must not wait for one."""
        while not self._aborted.is_set():
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            name, flat, done = item
            if self._error is None:
                try:
                    self._writer.write(name, flat)
                except BaseException as e:  # re-raised in the caller
                    self._error = e
            if done is not None:
                done()

    def write(self, name: str, flat: torch.Tensor, done: Callable[[], None] | None = None) -> None:
        """Queue a chunk; `done` runs on the writer thread once the chunk's memory may be reused."""
        if self._error is not None:
            raise self._error
        self._queue.put((name, flat, done))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._writer.close()

    def abort(self) -> None:
        """Stop the thread after a failure in the caller (the output directory is discarded)."""
        self._error = self._error or RuntimeError("aborted")
        self._aborted.set()
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
