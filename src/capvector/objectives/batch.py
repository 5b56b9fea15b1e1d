"""Reading a teacher's inputs from a collated training batch, with one message for what is missing or misshapen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from capvector.errors import CapvectorError


def batch_tensor(batch: Mapping[str, Any], key: str, dims: int, reader: str, *, last: int | None = None,
                 what: str = "") -> torch.Tensor:
    """`batch[key]` as a tensor of `dims` dimensions (the last of size `last`, if given); otherwise a one-line
    error naming `reader` (the teacher), the key (described by `what`, if given) and what was found."""
    if key not in batch:
        described = f" ({what})" if what else ""
        raise CapvectorError(f"{reader}: batch has no {key!r}{described}; found keys {sorted(batch)}")
    t = torch.as_tensor(batch[key])
    if t.dim() != dims or (last is not None and t.shape[-1] != last):
        ending = f" ending in {last}" if last is not None else ""
        raise CapvectorError(f"{reader}: batch[{key!r}] has shape {tuple(t.shape)}; expected {dims} dims{ending}")
    return t
