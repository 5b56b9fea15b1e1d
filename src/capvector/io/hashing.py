"""Content hashes of checkpoints, computed in a background thread while the main work streams.

hashlib releases the GIL on large buffers, so hashing overlaps with the tensor arithmetic.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from capvector.io.hub import cached_sha256

_CHUNK = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def files_digest(root: Path, files: list[str]) -> str:
    """One sha256 over (file name, file sha256) pairs, independent of the order given.

    A file of a Hugging Face cache snapshot is not re-read: its blob is named by its sha256.
    """
    h = hashlib.sha256()
    for rel in sorted(files):
        digest = cached_sha256(root / rel) or file_sha256(root / rel)
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return "sha256:" + h.hexdigest()


class BackgroundHasher:
    """Hashes several checkpoints' weight files on one worker thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capvector-hash")

    def submit(self, root: Path, files: list[str]) -> Future[str]:
        return self._pool.submit(files_digest, root, files)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
