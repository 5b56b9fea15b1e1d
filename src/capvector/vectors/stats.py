"""Streaming statistics of tensors seen chunk by chunk, accumulated in float64."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from capvector.errors import CapvectorError

# the output dtypes a vector or merged checkpoint may be written in (names as the CLI accepts them)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
CHUNK_ELEMENTS = 1 << 23  # 8M elements: 32 MiB per fp32 buffer; large enough for full-speed IO


def row_chunks(shape: tuple[int, ...], max_elements: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """(start, count) pairs over a flat tensor, aligned to whole rows of the last dimension.

    Row alignment lets factored tensors (B @ A) be produced for exactly the same chunks.
    """
    numel = math.prod(shape)
    if numel == 0:
        return
    row = shape[-1] if len(shape) >= 2 else 1
    step = max(row, (max_elements // row) * row)
    for start in range(0, numel, step):
        yield start, min(step, numel - start)


@dataclass
class RunningStats:
    """L2 norm, max |x|, zero fraction and element count of a tensor fed in chunks."""

    sumsq: float = 0.0
    max_abs: float = 0.0
    zeros: int = 0
    numel: int = 0

    def update(self, x: torch.Tensor) -> bool:
        """Add a chunk (1-D float); returns False if it holds NaN or Inf (then nothing is added).

        One fused reduction per statistic and no temporaries: these run on every byte of a merge.
        Chunk sums are fp32 (blocked reductions), accumulated across chunks in Python floats.
        """
        if not x.numel():
            return True
        lo, hi = torch.aminmax(x)
        lo_f, hi_f = float(lo), float(hi)
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
            return False
        flat = x.reshape(-1)
        sumsq = float(torch.dot(flat, flat)) if flat.dtype == torch.float32 else math.inf
        if not math.isfinite(sumsq):  # other dtypes, or squares beyond fp32's range: sum in float64
            sumsq = float(flat.double().square().sum())
        self.add(lo_f, hi_f, sumsq, int(torch.count_nonzero(x)), x.numel())
        return True

    def add(self, lo: float, hi: float, sumsq: float, nonzero: int, numel: int) -> None:
        """Add a finite chunk's statistics computed elsewhere (e.g. block by block, `vectors.blocks`)."""
        self.sumsq += sumsq
        self.max_abs = max(self.max_abs, abs(lo), abs(hi))
        self.zeros += numel - nonzero
        self.numel += numel

    @property
    def norm(self) -> float:
        return math.sqrt(self.sumsq)

    def to_json(self) -> dict[str, float]:
        return {
            "norm": self.norm,
            "max_abs": self.max_abs,
            "zero_fraction": self.zeros / self.numel if self.numel else 0.0,
            "numel": self.numel,
        }


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype for a CLI name such as ``bf16``, or a one-line error naming the choices."""
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise CapvectorError(f"unsupported dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def check_cast(name: str, lo: float, hi: float, dtype: torch.dtype) -> None:
    """Raise if finite values in [lo, hi] cannot be stored as `dtype`.

    Finiteness in fp32 is not enough: 7e4 is finite in fp32 and bf16 but overflows fp16 to inf, and a
    cast to float8_e4m3fn saturates silently to ±448; so the range is checked against the target.
    """
    if dtype == torch.float32 or not dtype.is_floating_point:
        return
    largest, limit = max(abs(lo), abs(hi)), float(torch.finfo(dtype).max)
    target = str(dtype).removeprefix("torch.")
    if largest > limit:
        raise CapvectorError(
            f"key {name!r}: value {largest:.6g} overflows {target} (largest finite {limit:.6g}); "
            "choose a wider --dtype such as fp32 or bf16"
        )
    if dtype == torch.float8_e8m0fnu and lo < 0:
        raise CapvectorError(f"key {name!r}: {target} stores only positive powers of two, found {lo:.6g}")


def check_cast_tensor(name: str, source: torch.Tensor, dtype: torch.dtype) -> None:
    """`check_cast` for a chunk whose range is not known yet (a no-op when `dtype` is at least as wide)."""
    if not (source.numel() and dtype.is_floating_point and source.dtype.is_floating_point):
        return
    narrows = torch.finfo(source.dtype).max > torch.finfo(dtype).max
    if not narrows and dtype != torch.float8_e8m0fnu:
        return
    lo, hi = torch.aminmax(source if source.dtype in (torch.float32, torch.float16, torch.bfloat16) else source.float())
    check_cast(name, float(lo), float(hi), dtype)
