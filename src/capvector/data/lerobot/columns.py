"""Per-frame arrays ↔ parquet columns: a feature of shape (d1, ..., dk) is a k-deep fixed-size list of scalars.

That is what LeRobot's `datasets` features (Sequence / Array2D) read back, and fixed sizes let a reader check
each axis against meta/info.json before reshaping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from capvector.errors import CapvectorError


def to_column(values: np.ndarray) -> pa.Array:
    """(N, *shape) → N rows; a scalar feature (shape () or (1,)) is a plain column, as LeRobot writes them."""
    if values.ndim == 1 or values.shape[1:] == (1,):
        return pa.array(values.reshape(-1))
    column: pa.Array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def from_column(column: pa.ChunkedArray | pa.Array, shape: list[int], where: Path, key: str) -> np.ndarray:
    """N rows → (N, *shape); a column whose nesting or sizes differ from `shape` is a one-line error."""
    rows = len(column)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    found: list[int] = []
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) \
            or pa.types.is_large_list(array.type):
        if pa.types.is_fixed_size_list(array.type):
            found.append(array.type.list_size)
        else:
            found.append(-1)
        array = array.flatten()
    expected = [] if shape == [1] else list(shape)
    if len(found) != len(expected) or any(f not in (-1, e) for f, e in zip(found, expected, strict=True)) \
            or len(array) != rows * int(np.prod(expected, dtype=np.int64)):
        raise CapvectorError(f"dataset {where}: column {key!r} has shape {found or [1]} per frame "
                             f"({len(array)} values in {rows} rows), meta/info.json says {list(shape)}")
    return array.to_numpy(zero_copy_only=False).reshape(rows, *expected)
