"""θ_meta = θ_pre + Σ_i λ_i·τ_i, streamed in fp32 into a checkpoint with the base's layout."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path

import torch

from capvector import __version__
from capvector.errors import CapvectorError
from capvector.io import (
    AtomicOutputDir,
    BackgroundWriter,
    BufferPool,
    Checkpoint,
    ShardedWriter,
    ShardPlan,
    parse_size,
    plan_resharded,
)
from capvector.io.hashing import BackgroundHasher
from capvector.io.prefetch import Prefetcher
from capvector.io.writer import write_json
from capvector.progress import ByteProgress
from capvector.vectors.extract import _first, parse_dtype
from capvector.vectors.format import CapabilityVector
from capvector.vectors.stats import row_chunks

RECIPE_FILE = "capvector-merge.json"
WeightSpec = float | Mapping[str, float]


@dataclass(frozen=True)
class VectorWeight:
    """A vector directory and its weight: a scalar λ, or ordered globs -> λ (first match wins, else 0)."""

    path: Path
    weight: WeightSpec = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept str, as the README's example passes

    def weight_for(self, name: str) -> float:
        if not isinstance(self.weight, Mapping):
            return float(self.weight)
        for pattern, value in self.weight.items():
            if fnmatchcase(name, pattern):
                return float(value)
        return 0.0


def load_weights_file(path: str | Path) -> dict[str, float]:
    """A JSON object mapping name globs to weights, in priority order."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CapvectorError(f"{p}: cannot read weights file ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise CapvectorError(
            f'{p}: weights file must be a JSON object of glob -> number, e.g. {{"*vision*": 0.5, "*": 1}}'
        )
    return {str(k): float(v) for k, v in data.items()}


def merge(
    base: str | Path,
    vectors: Sequence[VectorWeight | str | Path],
    output: str | Path,
    *,
    dtype: str | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
    max_shard_size: str | int | None = None,
    hash_sources: bool = True,
    progress: bool = True,
) -> dict:
    """Merge capability vectors into a base checkpoint; returns the resolved recipe (also saved)."""
    items = [v if isinstance(v, VectorWeight) else VectorWeight(Path(v)) for v in vectors]
    if not items:
        raise CapvectorError("no vector given to merge")
    base_ckpt = Checkpoint(base)
    if base_ckpt.kind == "peft-adapter":
        base_ckpt.close()
        raise CapvectorError(f"{base}: the base must be a model checkpoint, not a PEFT adapter")
    opened = [CapabilityVector(v.path) for v in items]
    hasher = BackgroundHasher()
    try:
        base_hash = hasher.submit(base_ckpt.root, base_ckpt.weight_files) if hash_sources else None
        warnings = _validate(base_ckpt, opened, allow_missing)
        out_float = parse_dtype(dtype) if dtype else None
        specs = [
            (n, out_float if (out_float and i.is_float) else i.dtype, i.shape) for n, i in base_ckpt.infos.items()
        ]
        plan = _plan(base_ckpt, specs, max_shard_size)
        contributions = {
            name: [(vec, w) for vec, item in zip(opened, items, strict=True)
                   if name in vec.tensors and (w := item.weight_for(name)) != 0.0]
            for name in base_ckpt.keys()
        }
        total_bytes = sum(i.numel * i.dtype.itemsize for i in base_ckpt.infos.values())
        with AtomicOutputDir(output, overwrite, inputs=[Path(base), *(v.path for v in items)]) as tmp:
            out_dtypes = {spec[0]: spec[1] for spec in specs}
            sharded = ShardedWriter(tmp, plan, {"format": "pt"})
            with BackgroundWriter(sharded) as writer, ByteProgress("merge", total_bytes, enabled=progress) as bar:
                _stream_merge(base_ckpt, plan.order(), contributions, out_dtypes, writer, bar)
            for rel in base_ckpt.non_weight_files():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base_ckpt.root / rel, tmp / rel)
            recipe = {
                "tool_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "definition": "theta_meta = theta_base + sum_i weight_i * tau_i (fp32, cast to output dtype)",
                "base": {"path": str(Path(base).resolve()), "hash": base_hash.result() if base_hash else None},
                "vectors": [
                    {
                        "path": str(item.path.resolve()),
                        "weight": dict(item.weight) if isinstance(item.weight, Mapping) else item.weight,
                        "sources": vec.meta.get("sources"),
                    }
                    for vec, item in zip(opened, items, strict=True)
                ],
                "dtype": dtype or "base",
                "merged_tensors": sum(1 for c in contributions.values() if c),
                "total_tensors": len(base_ckpt),
                "warnings": warnings,
            }
            write_json(tmp / RECIPE_FILE, recipe)
    finally:
        hasher.shutdown()
        base_ckpt.close()
        for v in opened:
            v.close()
    return recipe


def _validate(base: Checkpoint, vectors: list[CapabilityVector], allow_missing: bool) -> list[str]:
    warnings = []
    base_arch = (base.config() or {}).get("architectures")
    for vec in vectors:
        vec_arch = (vec.meta.get("architecture") or {}).get("architectures")
        if base_arch and vec_arch and base_arch != vec_arch:
            raise CapvectorError(
                f"{vec.path}: vector was extracted from architecture {vec_arch}, base {base.path} is {base_arch}"
            )
        names = vec.names()
        missing = [n for n in names if n not in base]
        if missing and len(missing) == len(names):
            raise CapvectorError(
                f"{vec.path}: none of its {len(names)} tensors exist in base {base.path} "
                f"(first: {_first(missing)}); is this vector for another model family?"
            )
        if missing:
            msg = (f"{vec.path}: {len(missing)} of {len(names)} vector tensors are missing from base "
                   f"{base.path} (first: {_first(missing)})")
            if not allow_missing:
                raise CapvectorError(msg + "; pass --allow-missing to skip them")
            warnings.append(msg + "; skipped")
        for name in names:
            if name not in base:
                continue
            info = base.info(name)
            if info.shape != vec.shape(name):
                raise CapvectorError(
                    f"key {name!r}: base {base.path} ({info.file}) has shape {list(info.shape)}, "
                    f"vector {vec.path} has {list(vec.shape(name))}"
                )
            if not info.is_float:
                raise CapvectorError(f"key {name!r}: base tensor is {info.dtype}, cannot add a float vector to it")
    return warnings


def _plan(base: Checkpoint, specs: list, max_shard_size: str | int | None) -> ShardPlan:
    """Mirror the base's shard files and index unless resharding was asked for (or the base is pickle)."""
    if max_shard_size is not None or base.kind in ("pickle", "sharded-pickle"):
        return plan_resharded(specs, parse_size(max_shard_size or "5GB"), stem="model")
    by_name = {s[0]: s for s in specs}
    shards = {rel: [by_name[n] for n in names] for rel, names in base.layout().items()}
    return ShardPlan(shards, index_name=base.index_file)


def _stream_merge(
    base: Checkpoint, order: list[str], contributions: dict[str, list[tuple[CapabilityVector, float]]],
    out_dtypes: dict[str, torch.dtype], writer: BackgroundWriter, bar: ByteProgress,
) -> None:
    """Chunk by chunk: reads run ahead on a thread, fp32 arithmetic here, writes behind on another thread."""
    jobs = [(name, start, count) for name in order for start, count in row_chunks(base.info(name).shape)]
    chunk = max((count for _, _, count in jobs), default=1)
    base_item = max(i.dtype.itemsize for i in base.infos.values())
    n_vec = max((len(c) for c in contributions.values()), default=0)
    region = -(-chunk * max(base_item, 4) // 8) * 8  # 8-byte aligned so every region can be viewed as its dtype
    inputs = BufferPool(region * (1 + n_vec), count=4)
    outputs = BufferPool(chunk * max(4, *(d.itemsize for d in out_dtypes.values())), count=4)
    acc_buf = torch.empty(chunk, dtype=torch.float32)

    def load(job: tuple[str, int, int]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        name, start, count = job
        buf = inputs.acquire()
        x = base.read_flat(name, start, count, into=buf[:region])
        vs = [vec.read_flat(name, start, count, into=buf[region * (k + 1) : region * (k + 2)])
              for k, (vec, _) in enumerate(contributions[name])]
        return buf, x, vs

    for (name, _start, count), (buf, x, vs) in Prefetcher(jobs, load, discard=lambda r: inputs.release(r[0])):
        out_dtype = out_dtypes[name]
        out_buf = outputs.acquire()
        out = out_buf[: count * out_dtype.itemsize].view(out_dtype)
        try:
            if contributions[name]:
                acc = out if out_dtype == torch.float32 else acc_buf[:count]
                acc.copy_(x)
                for (_, weight), v in zip(contributions[name], vs, strict=True):
                    acc.add_(v, alpha=weight)
                lo, hi = torch.aminmax(acc)
                if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                    outputs.release(out_buf)
                    raise CapvectorError(f"key {name!r}: merged values are not finite (check the vector and weights)")
                if acc.data_ptr() != out.data_ptr():
                    out.copy_(acc)
            else:
                out.copy_(x)
        finally:
            inputs.release(buf)
        writer.write(name, out, done=partial(outputs.release, out_buf))
        bar.advance(count * base.info(name).dtype.itemsize)
