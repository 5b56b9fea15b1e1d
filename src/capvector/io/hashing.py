"""Content hashes of checkpoints for provenance, from the bytes the arithmetic already reads (one pass).

Reading a multi-GB input a second time just to hash it costs as much as the extract itself on a small
machine. So a `SourceHashes` watches the reads of the checkpoints it tracks and feeds each range into
the sha256 of its file on one worker thread (hashlib releases the GIL on large buffers), while the
reader moves on. A file's hash must cover every byte in file order, so bytes the arithmetic never
needs (the header, tensors a selection skips, padding) are read by the worker when the hash reaches
them, and ranges already hashed are not fed twice. Files of a Hugging Face cache snapshot are never
read for this: their blob is named by its sha256. Torch pickle files are not read in byte ranges, so
they are hashed whole at the end.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch

from capvector.errors import CapvectorError
from capvector.io.checkpoint import Checkpoint
from capvector.io.hub import cached_sha256

_CHUNK = 8 * 1024 * 1024
_IN_FLIGHT = 8  # ranges queued for the worker at most: a reader ahead of the hash waits instead of piling up memory


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def combine_digests(file_digests: Iterable[tuple[str, str]]) -> str:
    """One sha256 over (file name, file sha256) pairs, independent of the order given."""
    h = hashlib.sha256()
    for rel, digest in sorted(file_digests):
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return "sha256:" + h.hexdigest()


def files_digest(root: Path, files: list[str]) -> str:
    """The provenance digest of `files` under `root`, each read from disk (Hub cache blobs: their names)."""
    return combine_digests((rel, cached_sha256(root / rel) or file_sha256(root / rel)) for rel in files)


class StreamHasher:
    """sha256 of one file, fed with byte ranges as a reader loads them, in any order.

    A range that starts past what is hashed so far first gets the gap read from disk; a range already
    hashed is ignored. `hexdigest` reads whatever the reader never loaded. Not thread-safe: one caller
    (the `SourceHashes` worker) at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sha = hashlib.sha256()
        self._pos = 0
        self._file: BinaryIO | None = None
        self.read_back = 0  # bytes read from disk for the hash alone: what the arithmetic did not need

    def feed(self, offset: int, data: torch.Tensor) -> None:
        """Bytes [offset, offset + data.nbytes) of the file, as a flat tensor (any dtype)."""
        end = offset + data.nbytes
        if end <= self._pos:
            return
        if offset > self._pos:
            self._read_up_to(offset)
        self._sha.update(memoryview(data.view(torch.uint8).numpy())[self._pos - offset:])
        self._pos = end

    def _read_up_to(self, end: int | None) -> None:
        if self._file is None:
            self._file = open(self.path, "rb")
        self._file.seek(self._pos)
        while end is None or self._pos < end:
            block = self._file.read(_CHUNK if end is None else min(_CHUNK, end - self._pos))
            if not block:
                if end is None:
                    return
                raise CapvectorError(f"{self.path}: file shorter than its header says (changed while reading?)")
            self._sha.update(block)
            self._pos += len(block)
            self.read_back += len(block)

    def hexdigest(self) -> str:
        self._read_up_to(None)
        self.close()
        return self._sha.hexdigest()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SourceHashes:
    """Provenance digests of several checkpoints, computed on one worker thread from their reads.

    Readers that load into a reusable buffer must not reuse it before the worker has hashed it:
    `hashed()` returns a future that completes once every range read so far is hashed.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capvector-hash")
        self._files: dict[Checkpoint, dict[str, StreamHasher | str | None]] = {}
        self._error: BaseException | None = None
        self._slots = threading.Semaphore(_IN_FLIGHT)

    def track(self, ckpt: Checkpoint) -> None:
        """Hash `ckpt`'s weight files from now on (call before anything is read from it)."""
        files: dict[str, StreamHasher | str | None] = {}
        for rel in ckpt.weight_files:
            path = ckpt.root / rel
            known = cached_sha256(path)
            if known is not None:
                files[rel] = known
            elif ckpt.observe_reads(rel, self._feeder(hasher := StreamHasher(path))):
                files[rel] = hasher
            else:
                files[rel] = None  # hashed whole at the end
        self._files[ckpt] = files

    def _feeder(self, hasher: StreamHasher):
        def feed(offset: int, data: torch.Tensor) -> None:
            self._slots.acquire()
            self._pool.submit(self._feed, hasher, offset, data)
        return feed

    def _feed(self, hasher: StreamHasher, offset: int, data: torch.Tensor) -> None:
        try:
            if self._error is None:
                hasher.feed(offset, data)
        except BaseException as e:  # re-raised by digest()
            self._error = e
        finally:
            self._slots.release()

    def hashed(self) -> Future[None]:
        return self._pool.submit(lambda: None)

    def digest(self, ckpt: Checkpoint) -> str:
        """The digest of a tracked checkpoint (`files_digest`'s value), once its reads are done."""
        files = self._files[ckpt]

        def finish() -> str:
            if self._error is not None:
                raise self._error
            return combine_digests(
                (rel, h if isinstance(h, str) else h.hexdigest() if h is not None else file_sha256(ckpt.root / rel))
                for rel, h in files.items())
        return self._pool.submit(finish).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for files in self._files.values():
            for h in files.values():
                if isinstance(h, StreamHasher):
                    h.close()
