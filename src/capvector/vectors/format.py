"""The capability-vector directory: `vector*.safetensors` (+ index) and `capvector.json`.

Tensors are keyed by the base model's parameter names. A tensor is stored either dense (same
shape as the parameter, fp32 by default) or factored as `NAME::B` (m×r) and `NAME::A` (r×n) with
τ[NAME] = B @ A in the parameter's own layout; factored storage is exact for LoRA-derived vectors.
"""

from __future__ import annotations

import json
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
            self.meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise CapvectorError(f"{meta_path}: invalid JSON ({e})") from e
        if self.meta.get("format") != FORMAT:
            raise CapvectorError(f"{meta_path}: format is {self.meta.get('format')!r}, expected {FORMAT!r}")
        if int(self.meta.get("format_version", 0)) > FORMAT_VERSION:
            raise CapvectorError(
                f"{meta_path}: format version {self.meta['format_version']} is newer than this tool "
                f"supports ({FORMAT_VERSION}); upgrade capvector"
            )
        self.checkpoint = Checkpoint(self.path)
        self.tensors: dict[str, dict] = self.meta["tensors"]
        for name, entry in self.tensors.items():
            keys = [name + FACTOR_B, name + FACTOR_A] if entry["storage"] == "factored" else [name]
            for key in keys:
                if key not in self.checkpoint:
                    raise CapvectorError(f"{self.path}: {META_FILE} lists {key!r} but no weight file holds it")

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


def is_vector_dir(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()
