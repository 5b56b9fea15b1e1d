"""Atomic outputs for the whole package: built under a hidden name beside the target, fsynced, renamed.

One helper instead of hand-written variants, for three reasons. `tempfile` creates files 0600 and
directories 0700 whatever the umask, so outputs ended up private to their owner; here temporaries are
created with 0666/0777 and the kernel applies the caller's umask, exactly as a plain `open()`/`mkdir`
would. Every temporary name records its owner's pid (`.NAME.partial-PID-XXXXXXXX`, `.NAME.old-PID-...`),
so a later run can tell the leftovers of a killed run from the work of a live one and remove them.
And a crash leaves only hidden siblings, never something at the target path that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import torch
from safetensors.torch import save_file

from capvector.errors import CapvectorError

log = logging.getLogger("capvector")

PARTIAL, OLD = "partial", "old"


def _temp_name(target: Path, kind: str) -> Path:
    # files keep their suffix: writers such as matplotlib and imageio pick the format from it
    suffix = target.suffix if kind == PARTIAL else ""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _stale_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.(?:{PARTIAL}|{OLD})-(\d+)-[0-9a-f]{{8}}.*")


def ensure_parent(target: Path) -> None:
    """Create the target's folder; a file in the way or a read-only parent is a one-line error."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CapvectorError(f"cannot write {target}: {parent} (or a folder above it) is a file") from None
    except OSError as e:
        raise CapvectorError(f"cannot create folder {parent} for {target}: {e.strerror}") from None


def _create(target: Path, directory: bool) -> Path:
    ensure_parent(target)
    while True:
        tmp = _temp_name(target, PARTIAL)
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise CapvectorError(f"cannot write into {target.parent}: {e.strerror}") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove hidden leftovers of `target` whose owner process is gone (a killed run); say so once each."""
    pattern, removed = _stale_pattern(target), []
    if not target.parent.is_dir():
        return removed
    for p in sorted(target.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if m and not _alive(int(m.group(1))):
            _remove(p)
            removed.append(p)
            log.warning(f"removed {p.name}, left in {target.parent} by an interrupted run (process {m.group(1)})")
    return removed


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory entry, to disk (file systems that cannot sync a directory are skipped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def fsync_tree(root: Path, file_mode: int) -> None:
    """fsync every file and folder under `root`, giving files `file_mode` (some writers, e.g. safetensors'
    `save_file`, create 0600 files whatever the umask)."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            if _mode(p) != file_mode:
                os.chmod(p, file_mode)
            fsync_path(p)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_path(d)


def publish_dir(tmp: Path, target: Path) -> Path:
    """Move a complete directory that several processes wrote together into place, replacing an older `target`.

    For writers that need a temporary path every process can compute (accelerate's `save_state` writes one file
    per rank), which `AtomicOutputDir`'s private temp name cannot be; the caller owns `tmp`'s lifetime."""
    fsync_tree(tmp, _mode(tmp) & 0o666)
    if target.exists() or target.is_symlink():
        _remove(target)
    os.replace(tmp, target)
    return target


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for any writer; on success it is fsynced and renamed to `path`."""
    target = Path(path)
    tmp = _create(target, directory=False)
    mode = _mode(tmp)  # 0666 less the umask: what open() gives
    try:
        yield tmp
        if _mode(tmp) != mode:  # the writer replaced the file (safetensors' save_file makes it 0600)
            os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, file too large, I/O error: one line naming the output
            raise CapvectorError(f"cannot write {target}: {e.strerror or e}") from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: object) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write CPU-contiguous copies of `tensors` as safetensors at `path`, atomically."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def check_output_path(target: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse to write over an input (or inside one), over existing output unless asked, or to no name."""
    if target.name in ("", ".", ".."):
        raise CapvectorError(f"output path {str(target)!r} names no new directory; give one, e.g. -o merged_model")
    t = target.resolve()
    for src in inputs:
        s = src.resolve()
        root = s if s.is_dir() else s.parent
        if t in (s, root) or root in t.parents or t in s.parents:
            raise CapvectorError(f"output {target} overlaps input {src}; choose another output path")
    if target.exists() and not overwrite:
        raise CapvectorError(f"output {target} already exists (pass --overwrite to replace it)")


class AtomicOutputDir:
    """A directory built beside its final location and renamed into place only once complete.

    A crash or SIGKILL leaves only a hidden `.NAME.partial-PID-*` sibling (removed by the next run for the
    same target once PID is gone); any exception, including SIGTERM in the CLI, removes it at once.
    `overwrite` replaces an existing target (file or directory) only after the new one is complete.
    """

    def __init__(self, target: str | Path, overwrite: bool = False, inputs: Sequence[Path] | None = None) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        check_output_path(self.target, inputs or [], overwrite)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        ensure_parent(self.target)
        remove_stale(self.target)
        self.tmp = _create(self.target, directory=True)
        return self.tmp

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            _remove(self.tmp)
            if isinstance(exc, OSError):  # disk full, file too large, I/O error: one line naming the output
                raise CapvectorError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
            return
        try:
            fsync_tree(self.tmp, _mode(self.tmp) & 0o666)
            self._swap()
        except OSError as e:
            _remove(self.tmp)
            raise CapvectorError(f"cannot write {self.target}: {e.strerror or e}") from e
        except BaseException:
            _remove(self.tmp)
            raise

    def _swap(self) -> None:
        assert self.tmp is not None
        old = None
        if self.target.exists() or self.target.is_symlink():
            if not self.overwrite:
                raise CapvectorError(f"output {self.target} appeared while writing; not replacing it")
            old = _temp_name(self.target, OLD)
            os.rename(self.target, old)
        try:
            os.rename(self.tmp, self.target)
        except BaseException:
            if old is not None:
                os.rename(old, self.target)
            raise
        fsync_path(self.target.parent)
        if old is not None:
            _remove(old)
