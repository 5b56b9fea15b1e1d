"""The capability-vector directory: `vector*.safetensors` (+ index) and `capvector.json`.

Tensors are keyed by the base model's parameter names. A tensor is stored either dense (same
shape as the parameter, fp32 by default) or factored as `NAME::B` (m×r) and `NAME::A` (r×n) with
τ[NAME] = B @ A in the parameter's own layout; factored storage is exact for LoRA-derived vectors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from capvector.errors import CapvectorError
from capvector.io import Checkpoint
from capvector.io.hub import resolve_input

META_FILE = "capvector.json"
FORMAT = "capvector.vector"
FORMAT_VERSION = 1
FACTOR_B = "::B"
FACTOR_A = "::A"


class CapabilityVector:
    """Read access to a vector directory: names, shapes, fp32 chunks, factors."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_input(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise CapvectorError(f"{self.path}: not a capability vector directory (missing {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CapvectorError(f"{meta_path}: cannot read ({e})") from e
        self.meta: dict = validate_meta(meta_path, meta)
        self.tensors: dict[str, dict] = self.meta["tensors"]
        self.checkpoint = Checkpoint(self.path)
        try:
            self._check_weights(meta_path)
        except CapvectorError:
            self.checkpoint.close()
            raise

    def _check_weights(self, meta_path: Path) -> None:
        """Every listed tensor is in the weight files with the listed shape (factors: B m×r, A r×n)."""
        ckpt = self.checkpoint
        stored: set[str] = set()
        for name, entry in self.tensors.items():
            shape = tuple(entry["shape"])
            if entry["storage"] == "factored":
                keys = [name + FACTOR_B, name + FACTOR_A]
                expected = None
            else:
                keys, expected = [name], shape
            for key in keys:
                if key not in ckpt:
                    raise CapvectorError(f"{self.path}: {META_FILE} lists {key!r} but no weight file holds it")
                if not ckpt.info(key).is_float:
                    raise CapvectorError(f"{self.path}: {key!r} is stored as {ckpt.info(key).dtype}, expected a float")
            stored.update(keys)
            if expected is not None and ckpt.info(name).shape != expected:
                raise CapvectorError(
                    f"{self.path}: {name!r} is stored with shape {list(ckpt.info(name).shape)} but {META_FILE} "
                    f"says {list(expected)}"
                )
            if expected is None:
                b, a = ckpt.info(name + FACTOR_B).shape, ckpt.info(name + FACTOR_A).shape
                if len(shape) != 2 or len(b) != 2 or len(a) != 2 or b[1] != a[0] or (b[0], a[1]) != shape:
                    raise CapvectorError(
                        f"{self.path}: factored {name!r} has B {list(b)} and A {list(a)}, which do not multiply "
                        f"to its shape {list(shape)} (B must be m×r and A r×n with the same rank r)"
                    )
        extra = sorted(set(ckpt.keys()) - stored)
        if extra:
            raise CapvectorError(f"{self.path}: weight files hold {len(extra)} tensors {META_FILE} does not list "
                                 f"(first: {extra[:3]}); the directory is inconsistent")

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def is_factored(self, name: str) -> bool:
        return self.tensors[name]["storage"] == "factored"

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) in fp32 for a factored tensor."""
        b = self.checkpoint.read(name + FACTOR_B).float()
        a = self.checkpoint.read(name + FACTOR_A).float()
        return b, a

    def read_flat(self, name: str, start: int, count: int, into: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 elements [start, start+count) of τ[name]; row-aligned chunks for factored tensors.

        `into`: reusable uint8 scratch buffer for dense tensors (fp32-stored chunks land there as-is).
        """
        if not self.is_factored(name):
            t = self.checkpoint.read_flat(name, start, count, into)
            return t if t.dtype == torch.float32 else t.float()
        cols = self.shape(name)[-1]
        if start % cols or count % cols:
            raise ValueError(f"factored tensor {name!r} must be read in whole rows")
        b, a = self._cached_factors(name)
        return (b[start // cols : (start + count) // cols] @ a).reshape(-1)

    def _cached_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        # Factors are small (rank r); keep the last one so row chunks of one tensor reuse it.
        if getattr(self, "_factor_cache_name", None) != name:
            self._factor_cache = self.factors(name)
            self._factor_cache_name = name
        return self._factor_cache

    def dense(self, name: str) -> torch.Tensor:
        """The whole τ[name] as a dense fp32 tensor."""
        if self.is_factored(name):
            b, a = self.factors(name)
            return (b @ a).reshape(self.shape(name))
        return self.checkpoint.read(name).float()

    def close(self) -> None:
        self.checkpoint.close()

    def __enter__(self) -> CapabilityVector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validate_meta(meta_path: Path, meta: object) -> dict:
    """Check every field of `capvector.json` that the tools read, once, with errors naming the field."""

    def bad(field: str, value: object, expected: str) -> CapvectorError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return CapvectorError(f"{meta_path}: {field} is {shown}, expected {expected}")

    if not isinstance(meta, dict):
        raise bad("the top level", meta, "a JSON object")
    if meta.get("format") != FORMAT:
        raise bad("format", meta.get("format"), repr(FORMAT))
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise bad("format_version", version, "a positive integer")
    if version > FORMAT_VERSION:
        raise CapvectorError(
            f"{meta_path}: format version {version} is newer than this tool supports ({FORMAT_VERSION}); "
            "upgrade capvector"
        )
    tensors = meta.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise bad("tensors", tensors, "a non-empty object of name -> entry")
    for name, entry in tensors.items():
        if not isinstance(entry, dict):
            raise bad(f"tensors[{name!r}]", entry, "an object with shape and storage")
        if entry.get("storage") not in ("dense", "factored"):
            raise bad(f"tensors[{name!r}].storage", entry.get("storage"), "'dense' or 'factored'")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensors[{name!r}].shape", shape, "a list of non-negative integers")
    weight = meta.get("default_weight", 1.0)
    if not (_is_number(weight) and math.isfinite(weight)):
        raise bad("default_weight", weight, "a finite number")
    arch = meta.get("architecture")
    if arch is not None and not _valid_architecture(arch):
        raise bad("architecture", arch, "null or an object of architectures (list of names) and model_type")
    sources = meta.get("sources")
    if sources is not None and not (isinstance(sources, dict) and all(isinstance(v, dict) for v in sources.values())):
        raise bad("sources", sources, "an object of role -> {path, kind, hash}")
    for field in ("dtype", "base_model", "task_set", "note", "definition", "tool_version", "created"):
        if not isinstance(meta.get(field), str | None):
            raise bad(field, meta.get(field), "a string or null")
    for field in ("selection", "totals", "skipped"):
        if not isinstance(meta.get(field), dict | None):
            raise bad(field, meta.get(field), "an object or null")
    return meta


def _valid_architecture(arch: object) -> bool:
    if not isinstance(arch, dict):
        return False
    names = arch.get("architectures")
    names_ok = names is None or (isinstance(names, list) and all(isinstance(a, str) for a in names))
    return names_ok and all(isinstance(arch.get(k), str | None) for k in ("model_type", "base_model_name_or_path"))


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def is_vector_dir(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()
