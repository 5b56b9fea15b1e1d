"""The safetensors file format, read and written one chunk at a time.

The `safetensors` library reads through mmap (pages stay resident, RSS grows with the file) and
writes only from a complete in-memory dict. Streaming extract/merge of multi-GB checkpoints needs
neither: we parse and validate the header ourselves, `readinto` byte ranges, and write the header
up front followed by tensor bytes as they are computed. Files we write are read back by the
official library in the tests.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from capvector.errors import CapvectorError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "C64": torch.complex64,  # read and copied as-is; never part of vector arithmetic (not a real float)
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives inside a safetensors file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_header(path: Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors header; entries come back in file (offset) order."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CapvectorError(f"{path}: not a safetensors file (only {size} bytes, header length missing)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CapvectorError(
                    f"{path}: corrupted or truncated safetensors header "
                    f"(header length {header_len}, file size {size})"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CapvectorError(f"{path}: cannot read ({e})") from e
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as e:
        raise CapvectorError(f"{path}: corrupted safetensors header, invalid JSON ({e})") from e
    if not isinstance(header, dict):
        raise CapvectorError(f"{path}: corrupted safetensors header (expected a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CapvectorError(f"{path}: __metadata__ must be an object of strings, found {_short(metadata)}")
    data_start = 8 + header_len
    data_len = size - data_start
    entries = [_parse_entry(path, name, info, data_start, data_len) for name, info in header.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_disjoint(path, entries)
    return entries, metadata


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ints(value: object, length: int | None = None) -> list[int] | None:
    """`value` as a list of non-negative ints (JSON true/false and floats are not ints), else None."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value):
        return None
    return value


def _parse_entry(path: Path, name: str, info: object, data_start: int, data_len: int) -> TensorEntry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CapvectorError(
            f"{path}: corrupted header entry for key {name!r}: expected dtype, shape and data_offsets, "
            f"found {_short(info)}"
        )
    dtype_name = info["dtype"]
    if not isinstance(dtype_name, str):
        raise CapvectorError(f"{path}: key {name!r} has dtype {_short(dtype_name)}, expected a name such as 'F32'")
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise CapvectorError(
            f"{path}: key {name!r} has dtype {dtype_name!r}, which capvector does not support "
            f"(supported: {', '.join(DTYPES)})"
        )
    shape = _ints(info["shape"])
    if shape is None:
        raise CapvectorError(
            f"{path}: key {name!r} has shape {_short(info['shape'])}, expected a list of non-negative integers"
        )
    offsets = _ints(info["data_offsets"], 2)
    if offsets is None:
        raise CapvectorError(
            f"{path}: key {name!r} has data_offsets {_short(info['data_offsets'])}, expected [begin, end] "
            "(non-negative integers)"
        )
    begin, end = offsets
    if end < begin or end > data_len or end - begin != math.prod(shape) * itemsize(dtype):
        raise CapvectorError(
            f"{path}: key {name!r} has data offsets [{begin}, {end}) that do not fit its "
            f"shape {shape} {dtype_name} or the file ({data_len} data bytes): truncated or corrupted"
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_disjoint(path: Path, entries: list[TensorEntry]) -> None:
    """Two tensors reading the same bytes is a corrupted (or crafted) file, never a real checkpoint."""
    for prev, cur in zip(entries, entries[1:], strict=False):
        if cur.begin < prev.end:
            raise CapvectorError(
                f"{path}: keys {prev.name!r} and {cur.name!r} overlap in the data section "
                f"(bytes [{prev.begin}, {prev.end}) and [{cur.begin}, {cur.end})): corrupted file"
            )


def read_range(
    f: BinaryIO, path: Path, entry: TensorEntry, start: int, count: int, into: torch.Tensor | None = None
) -> torch.Tensor:
    """Read elements [start, start+count) of a tensor as a flat tensor of its own dtype.

    `into` is a reusable uint8 scratch buffer (at least the chunk's bytes): streaming loops pass one
    so that no fresh, page-faulting allocation happens per chunk.
    """
    size = itemsize(entry.dtype)
    nbytes = count * size
    buf = torch.empty(nbytes, dtype=torch.uint8) if into is None else into[:nbytes]
    f.seek(entry.begin + start * size)
    got = f.readinto(memoryview(buf.numpy()))
    if got != nbytes:
        raise CapvectorError(f"{path}: truncated data for key {entry.name!r} (wanted {nbytes} bytes, got {got})")
    return buf.view(entry.dtype)


class StreamingSafetensorsWriter:
    """Writes a safetensors file whose layout is fixed up front and whose data arrives in order.

    Every tensor must be written completely and in the declared order; `close()` checks it.
    """

    def __init__(
        self,
        path: Path,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        self._sizes: list[tuple[str, int]] = []
        for name, dtype, shape in specs:
            if name in header or name == "__metadata__":
                raise CapvectorError(f"{path}: duplicate tensor name {name!r}")
            nbytes = math.prod(shape) * itemsize(dtype)
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._sizes.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_bytes = offset
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._index = 0
        self._written = 0
        self._skip_empty()

    def write(self, name: str, flat: torch.Tensor) -> None:
        """Append the next chunk of tensor `name` (contiguous, already in the declared dtype)."""
        if self._index >= len(self._sizes) or self._sizes[self._index][0] != name:
            expected = self._sizes[self._index][0] if self._index < len(self._sizes) else "<end>"
            raise RuntimeError(f"{self.path}: wrote {name!r} out of order, expected {expected!r}")
        data = flat.contiguous().view(-1).view(torch.uint8).numpy()
        self._f.write(memoryview(data))
        self._written += data.nbytes
        total = self._sizes[self._index][1]
        if self._written > total:
            raise RuntimeError(f"{self.path}: too many bytes for {name!r}")
        if self._written == total:
            self._index += 1
            self._written = 0
            self._skip_empty()

    def _skip_empty(self) -> None:
        while self._index < len(self._sizes) and self._sizes[self._index][1] == 0:
            self._index += 1

    def close(self) -> None:
        self._skip_empty()
        self._f.close()
        if self._index != len(self._sizes):
            raise RuntimeError(f"{self.path}: closed before {self._sizes[self._index][0]!r} was written")

    def abort(self) -> None:
        self._f.close()
