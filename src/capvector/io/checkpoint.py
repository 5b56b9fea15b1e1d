"""Lazy, read-only access to model checkpoints on disk, whatever their layout.

A `Checkpoint` is a set of named tensors plus the files around them (config, tokenizer, ...).
It never loads a whole model: metadata comes from headers, and data is read one tensor (or one
chunk of a tensor) at a time. Supported: a single `.safetensors` file; a directory with one or
more safetensors files, sharded with a `*.safetensors.index.json`; a PEFT adapter directory;
`.bin`/`.pt`/`.pth` files (and their index) loaded only with `torch.load(weights_only=True)`.
A local Hugging Face snapshot directory (files symlinked into a blob store) is just a directory, and a Hub id
(`org/name[@revision]`) names the cached snapshot (`capvector.io.hub`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import torch

from capvector.errors import CapvectorError
from capvector.io.hub import resolve_input
from capvector.io.safetensors_format import TensorEntry, read_header, read_range

SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PICKLE_INDEX_SUFFIX = ".bin.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one tensor, known without reading its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: str  # path of the file holding it, relative to the checkpoint root

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


class _SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        entries, self.metadata = read_header(path)
        self.entries: dict[str, TensorEntry] = {e.name: e for e in entries}
        self._handle: BinaryIO | None = None
        self.on_read: Callable[[int, torch.Tensor], None] | None = None  # (file offset, bytes read), e.g. a hash

    def read_flat(self, name: str, start: int, count: int, into: torch.Tensor | None = None) -> torch.Tensor:
        if self._handle is None:
            self._handle = open(self.path, "rb")
        entry = self.entries[name]
        data = read_range(self._handle, self.path, entry, start, count, into)
        if self.on_read is not None and count:
            self.on_read(entry.begin + start * data.element_size(), data)
        return data

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _PickleFile:
    """A torch pickle state dict, memory-mapped where the zip format allows it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip format
        except CapvectorError:
            raise
        except Exception as e:  # torch raises several types for unsafe or corrupt pickles
            raise CapvectorError(f"{path}: cannot load with torch.load(weights_only=True): {e}") from e
        if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
            obj = next(iter(obj.values()))
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise CapvectorError(f"{path}: expected a state dict mapping names to tensors")
        self.tensors: dict[str, torch.Tensor] = obj

    def read_flat(self, name: str, start: int, count: int, into: torch.Tensor | None = None) -> torch.Tensor:
        return self.tensors[name].reshape(-1)[start : start + count].clone()

    def close(self) -> None:
        self.tensors = {}


# LeRobot >= 0.4 saves pre/post-processor state (normalisation statistics such as `observation.state.mean`)
# as `policy_preprocessor_step_3_normalizer_processor.safetensors` beside the weights: not model weights.
_PROCESSOR_STATE = re.compile(r".+_step_\d+_.+\.safetensors")


def is_processor_state(name: str) -> bool:
    return _PROCESSOR_STATE.fullmatch(name) is not None


def _is_weight_file(name: str) -> bool:
    """Weights (ours or stale alternatives such as a .bin beside safetensors) are never copied as-is."""
    if is_processor_state(name):
        return False
    return (
        name.endswith((".safetensors", ".index.json"))
        or (name.startswith(("pytorch_model", "adapter_model", "model")) and name.endswith(PICKLE_SUFFIXES))
    )


class Checkpoint:
    """A read-only, lazily loaded set of named tensors (see module docstring for layouts)."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_input(path)
        if not self.path.exists():
            raise CapvectorError(f"{self.path}: no such file or directory")
        self.root = self.path if self.path.is_dir() else self.path.parent
        self.index_file: str | None = None
        self.kind, weight_files = self._discover()
        self._files: dict[str, _SafetensorsFile | _PickleFile] = {}
        self.infos: dict[str, TensorInfo] = {}
        for rel in weight_files:
            self._add_file(rel)
        if self.index_file is not None:
            self._check_index_matches()
        if not self.infos:
            raise CapvectorError(f"{self.path}: contains no tensors")

    # ----------------------------------------------------------------- discovery
    def _discover(self) -> tuple[str, list[str]]:
        if self.path.is_file():
            return self._discover_file(self.path.name)
        names = sorted(p.name for p in self.path.iterdir() if p.is_file())
        if "adapter_config.json" in names:
            for candidate in ("adapter_model.safetensors", "adapter_model.bin"):
                if candidate in names:
                    return "peft-adapter", [candidate]
            raise CapvectorError(f"{self.path}: PEFT adapter directory without adapter_model.safetensors")
        st_index = [n for n in names if n.endswith(SAFETENSORS_INDEX_SUFFIX)]
        if len(st_index) > 1:
            raise CapvectorError(f"{self.path}: several safetensors index files {st_index}; point at one")
        if st_index:
            return "sharded-safetensors", self._read_index(st_index[0])
        safetensors_files = [n for n in names if n.endswith(".safetensors") and not is_processor_state(n)]
        if safetensors_files:
            return "safetensors", safetensors_files
        pt_index = [n for n in names if n.endswith(PICKLE_INDEX_SUFFIX)]
        if pt_index:
            return "sharded-pickle", self._read_index(pt_index[0])
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            return "pickle", pickles
        raise CapvectorError(
            f"{self.path}: no weights found (expected *.safetensors, a *.safetensors.index.json, "
            "adapter_config.json + adapter_model.safetensors, or *.bin/*.pt)"
        )

    def _discover_file(self, name: str) -> tuple[str, list[str]]:
        if name.endswith(SAFETENSORS_INDEX_SUFFIX) or name.endswith(PICKLE_INDEX_SUFFIX):
            kind = "sharded-safetensors" if name.endswith(SAFETENSORS_INDEX_SUFFIX) else "sharded-pickle"
            return kind, self._read_index(name)
        if name.endswith(".safetensors"):
            return "safetensors", [name]
        if name.endswith(PICKLE_SUFFIXES):
            return "pickle", [name]
        raise CapvectorError(f"{self.path}: unknown checkpoint file type (want .safetensors, .bin, .pt, index json)")

    def _read_index(self, name: str) -> list[str]:
        index_path = self.root / name
        try:
            index = json.loads(index_path.read_text())
            if not isinstance(index, dict):
                raise TypeError("not a JSON object")
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CapvectorError(f"{index_path}: invalid index file ({e})") from e
        files: list[str] = []
        for key, rel in weight_map.items():
            if not isinstance(rel, str):
                raise CapvectorError(f"{index_path}: key {key!r} maps to {rel!r}, expected a file name")
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts or str(rel) == "":
                raise CapvectorError(
                    f"{index_path}: key {key!r} names file {rel!r} outside the checkpoint directory"
                )
            if not (self.root / pure).is_file():
                raise CapvectorError(f"{index_path}: key {key!r} names missing file {rel!r}")
            if str(pure) not in files:
                files.append(str(pure))
        self.index_file = name
        self._index_map = {k: str(PurePosixPath(str(v))) for k, v in weight_map.items()}
        return files

    def _add_file(self, rel: str) -> None:
        path = self.root / rel
        handle: _SafetensorsFile | _PickleFile
        if rel.endswith(".safetensors"):
            handle = _SafetensorsFile(path)
            items = [(e.name, e.dtype, e.shape) for e in handle.entries.values()]
        else:
            handle = _PickleFile(path)
            items = [(k, v.dtype, tuple(v.shape)) for k, v in handle.tensors.items()]
        self._files[rel] = handle
        for name, dtype, shape in items:
            if name in self.infos:
                raise CapvectorError(
                    f"{self.path}: key {name!r} appears in both {self.infos[name].file} and {rel}"
                )
            self.infos[name] = TensorInfo(name, dtype, shape, rel)

    def _check_index_matches(self) -> None:
        indexed = set(self._index_map)
        found = set(self.infos)
        if indexed != found:
            missing = sorted(indexed - found)[:5]
            extra = sorted(found - indexed)[:5]
            raise CapvectorError(
                f"{self.root / str(self.index_file)}: index does not match the shards "
                f"(indexed but absent: {missing}, present but not indexed: {extra})"
            )
        for name, rel in self._index_map.items():
            if self.infos[name].file != rel:
                raise CapvectorError(
                    f"{self.root / str(self.index_file)}: key {name!r} indexed in {rel} "
                    f"but found in {self.infos[name].file}"
                )

    # ----------------------------------------------------------------- access
    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise CapvectorError(f"{self.path}: no tensor named {name!r}") from None

    def read_flat(
        self, name: str, start: int = 0, count: int | None = None, into: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Elements [start, start+count) of a tensor, flat, in its stored dtype.

        `into`: optional reusable uint8 scratch buffer the bytes are read into (safetensors only).
        """
        info = self.info(name)
        if count is None:
            count = info.numel - start
        if start < 0 or count < 0 or start + count > info.numel:
            raise ValueError(f"{name!r}: range [{start}, {start + count}) outside its {info.numel} elements")
        return self._files[info.file].read_flat(name, start, count, into)

    def read(self, name: str) -> torch.Tensor:
        """A whole tensor in its stored dtype and shape."""
        return self.read_flat(name).reshape(self.info(name).shape)

    def observe_reads(self, rel: str, callback: Callable[[int, torch.Tensor], None]) -> bool:
        """Call `callback(file offset, data)` after every read from weight file `rel`; False if that file is not
        read in byte ranges (a torch pickle), so the callback would never see its bytes."""
        handle = self._files[rel]
        if not isinstance(handle, _SafetensorsFile):
            return False
        handle.on_read = callback
        return True

    @property
    def weight_files(self) -> list[str]:
        return list(self._files)

    def layout(self) -> dict[str, list[str]]:
        """Weight file -> tensor names in file order: what a writer mirrors."""
        out: dict[str, list[str]] = {rel: [] for rel in self._files}
        for name, info in self.infos.items():
            out[info.file].append(name)
        return out

    def non_weight_files(self) -> list[Path]:
        """Files beside the weights (config, tokenizer, processor...), relative to the root."""
        if self.path.is_file():
            return []
        out = []
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if p.is_file() and not _is_weight_file(rel.name) and not rel.parts[0].startswith("."):
                out.append(rel)
        return out

    def config(self) -> dict | None:
        """The model's `config.json` (or a PEFT `adapter_config.json`), if present."""
        for name in ("config.json", "adapter_config.json"):
            p = self.root / name
            if self.path.is_dir() and p.is_file():
                try:
                    config = json.loads(p.read_text())
                except (OSError, ValueError) as e:
                    raise CapvectorError(f"{p}: cannot read as JSON ({e})") from e
                if not isinstance(config, dict):
                    raise CapvectorError(f"{p}: expected a JSON object, found {type(config).__name__}")
                return config
        return None

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
