"""θ_meta = θ_pre + Σ_i λ_i·τ_i, streamed in fp32 into a checkpoint with the base's layout."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from capvector._version import __version__
from capvector.errors import CapvectorError, first_names
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
from capvector.io.atomic import atomic_write_json
from capvector.io.hashing import SourceHashes
from capvector.io.hub import resolve_input
from capvector.io.prefetch import Prefetcher
from capvector.progress import ProgressBar
from capvector.vectors.blocks import BlockRunner
from capvector.vectors.card import CARD_FILE
from capvector.vectors.combine import Combine, KeepRule, combine_into
from capvector.vectors.format import CapabilityVector
from capvector.vectors.merge_files import render_merge_card, split_base_files
from capvector.vectors.rename import PrefixMap
from capvector.vectors.stats import check_cast, check_cast_tensor, parse_dtype, row_chunks

RECIPE_FILE = "capvector-merge.json"
WeightSpec = float | Mapping[str, float]


class Contribution(NamedTuple):
    """One vector's part in one base tensor: its position in the merge, the vector, its key there, λ."""

    index: int
    vector: CapabilityVector
    key: str
    weight: float


@dataclass(frozen=True)
class VectorWeight:
    """A vector directory and its weight: a scalar λ, or ordered globs -> λ (first match wins, else 0).

    `weight=None` takes the λ recommended in the vector's `capvector.json` (`default_weight`, 1.0 unless
    the extract said otherwise). Globs match the vector's own key names, before any prefix map.
    """

    path: Path
    weight: WeightSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", resolve_input(self.path))  # a str, a Path or a Hub id
        values = self.weight.values() if isinstance(self.weight, Mapping) else [self.weight]
        for value in values:
            if value is not None:
                check_weight(value, f"{self.path}: weight")

    def rules_deciding_nothing(self, names: Sequence[str]) -> list[str]:
        """Glob rules of a weight mapping that decide no tensor (match none, or only ones an earlier rule took)."""
        if not isinstance(self.weight, Mapping):
            return []
        undecided, dead = list(names), []
        for pattern in self.weight:
            hits = [n for n in undecided if fnmatchcase(n, pattern)]
            if hits:
                undecided = [n for n in undecided if n not in set(hits)]
                continue
            shadowed = any(fnmatchcase(n, pattern) for n in names)
            why = "every tensor it matches is taken by an earlier rule" if shadowed else "matches no tensor"
            dead.append(f"{pattern!r} ({why})")
        return dead

    def resolved(self, vector: CapabilityVector) -> VectorWeight:
        """This weight with `None` replaced by the vector's recommended λ."""
        if self.weight is not None:
            return self
        return VectorWeight(self.path, float(vector.meta.get("default_weight", 1.0)))

    def weight_for(self, name: str) -> float:
        if self.weight is None:
            raise ValueError("VectorWeight.weight_for: resolve the default weight first (VectorWeight.resolved)")
        if not isinstance(self.weight, Mapping):
            return float(self.weight)
        for pattern, value in self.weight.items():
            if fnmatchcase(name, pattern):
                return float(value)
        return 0.0


def check_weight(value: object, what: str) -> float:
    """A weight is a finite real number; JSON `true` or `NaN` is a mistake, not 1.0 or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CapvectorError(f"{what} must be a finite number, found {value!r}")
    return float(value)


def load_weights_file(path: str | Path) -> dict[str, float]:
    """A JSON object mapping name globs to weights, in priority order."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CapvectorError(f"{p}: cannot read weights file ({e})") from e
    if not isinstance(data, dict) or not data:
        raise CapvectorError(
            f'{p}: weights file must be a non-empty JSON object of glob -> number, e.g. {{"*vision*": 0.5, "*": 1}}'
        )
    return {str(k): check_weight(v, f"{p}: weight of rule {k!r}") for k, v in data.items()}


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
    prefix_map: PrefixMap | Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    strip_prefix: str | None = None,
    add_prefix: str | None = None,
    combine: Combine | None = None,
) -> dict:
    """Merge capability vectors into a base checkpoint; returns the resolved recipe (also saved).

    `strip_prefix`/`add_prefix` (one rule) and `prefix_map` (OLD → NEW prefixes, longest match wins)
    rename the vectors' keys to the base's names, e.g. a StarVLA vector (`qwen_vl_interface.model.*`)
    merged into a plain Hugging Face Qwen-VL directory. Keys no rule renames are an error
    (`allow_missing` skips and reports them), as are renamed keys the base lacks.
    `combine` adds the weighted vectors (the default) or resolves their conflicts TIES/DARE-style
    (`capvector.vectors.combine`).
    """
    combine = combine or Combine()
    items = [v if isinstance(v, VectorWeight) else VectorWeight(Path(v)) for v in vectors]
    if not items:
        raise CapvectorError("no vector given to merge")
    seen: dict[Path, Path] = {}
    for item in items:
        if item.path.resolve() in seen:
            raise CapvectorError(
                f"vector {item.path} is given twice (also as {seen[item.path.resolve()]}); it would be added twice. "
                "Give it once with the summed weight instead"
            )
        seen[item.path.resolve()] = item.path
    rules = prefix_map.rules if isinstance(prefix_map, PrefixMap) else prefix_map
    names = PrefixMap.build(rules, strip_prefix=strip_prefix, add_prefix=add_prefix)
    base = resolve_input(base)
    base_ckpt = Checkpoint(base)
    if base_ckpt.kind == "peft-adapter":
        base_ckpt.close()
        raise CapvectorError(f"{base}: the base must be a model checkpoint, not a PEFT adapter")
    opened = [CapabilityVector(v.path) for v in items]
    items = [item.resolved(vec) for item, vec in zip(items, opened, strict=True)]
    hashes = SourceHashes()
    try:
        if hash_sources:  # the base's bytes are hashed from the reads of the merge itself
            hashes.track(base_ckpt)
        keymaps, warnings = _key_maps(opened, names, allow_missing)
        warnings += _check_rules(items, opened, allow_missing)
        warnings += _validate(base_ckpt, opened, keymaps, names, allow_missing)
        out_float = parse_dtype(dtype) if dtype else None
        specs = [
            (n, out_float if (out_float and i.is_float) else i.dtype, i.shape) for n, i in base_ckpt.infos.items()
        ]
        plan = _plan(base_ckpt, specs, max_shard_size)
        contributions = {
            name: [Contribution(index, vec, keys[name], w)
                   for index, (vec, keys, item) in enumerate(zip(opened, keymaps, items, strict=True))
                   if name in keys and (w := item.weight_for(keys[name])) != 0.0]
            for name in base_ckpt.keys()
        }
        if not any(contributions.values()):
            weights = [w for item in items for w in (item.weight.values() if isinstance(item.weight, Mapping)
                                                     else [item.weight])]
            if any(weights):
                raise CapvectorError(f"no vector tensor is merged into {base}: no weight rule selects a tensor the "
                                     "base has; the output would equal the base")
            warnings.append("every weight is 0: the output equals the base")
        total_bytes = sum(i.numel * i.dtype.itemsize for i in base_ckpt.infos.values())
        with AtomicOutputDir(output, overwrite, inputs=[Path(base), *(v.path for v in items)]) as tmp:
            out_dtypes = {spec[0]: spec[1] for spec in specs}
            sharded = ShardedWriter(tmp, plan, {"format": "pt"})
            bar = ProgressBar("merge", total_bytes, unit="bytes", enabled=progress)
            with BackgroundWriter(sharded) as writer, bar:
                _stream_merge(base_ckpt, plan.order(), contributions, out_dtypes, writer, bar, combine,
                              hashes.hashed if hash_sources else None)
            copied, skipped_files = split_base_files(base_ckpt.non_weight_files())
            for rel in copied:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base_ckpt.root / rel, tmp / rel)
            recipe = {
                "tool_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "definition": combine.to_json()["definition"],
                "combine": combine.to_json(),
                "base": {"path": str(Path(base).resolve()),
                         "hash": hashes.digest(base_ckpt) if hash_sources else None},
                "vectors": [
                    {
                        "path": str(item.path.resolve()),
                        "weight": dict(item.weight) if isinstance(item.weight, Mapping) else item.weight,
                        "sources": vec.meta.get("sources"),
                    }
                    for vec, item in zip(opened, items, strict=True)
                ],
                "dtype": dtype or "base",
                "prefix_map": names.to_json(),
                "merged_tensors": sum(1 for c in contributions.values() if c),
                "total_tensors": len(base_ckpt),
                "warnings": warnings,
                "skipped_base_files": skipped_files,
            }
            atomic_write_json(tmp / RECIPE_FILE, recipe)
            card = render_merge_card(recipe, Path(base), base_ckpt.root if Path(base).is_dir() else None,
                                     [vec.meta for vec in opened])
            (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    finally:
        hashes.shutdown()
        base_ckpt.close()
        for v in opened:
            v.close()
    return recipe


def _key_maps(vectors: list[CapabilityVector], names: PrefixMap, allow_missing: bool
              ) -> tuple[list[dict[str, str]], list[str]]:
    """Per vector {base name: vector key}; keys the prefix map cannot rename are an error or a warning."""
    keymaps, warnings = [], []
    for vec in vectors:
        if not names:
            keymaps.append({n: n for n in vec.names()})
            continue
        mapped, unmatched = names.map_names(vec.names())
        if unmatched:
            msg = (f"{vec.path}: {len(unmatched)} of {len(vec.names())} vector tensors start with no prefix of the "
                   f"prefix map {names.to_json()} (first: {first_names(unmatched)})")
            if not allow_missing or not mapped:
                raise CapvectorError(msg + "; extract a vector that selects only the mapped part (e.g. "
                                     "preset qwen-vla:vlm), add a rule for them, or pass --allow-missing to skip them")
            warnings.append(msg + "; skipped")
        keymaps.append(mapped)
    return keymaps, warnings


def _check_rules(items: list[VectorWeight], vectors: list[CapabilityVector], allow_missing: bool) -> list[str]:
    """A weight rule that decides no tensor is a typo or a stale file: an error, or with allow_missing a warning."""
    warnings = []
    for item, vec in zip(items, vectors, strict=True):
        dead = item.rules_deciding_nothing(vec.names())
        if dead:
            msg = f"{vec.path}: weight rules that select nothing: {', '.join(dead)}"
            if not allow_missing:
                raise CapvectorError(msg + "; fix the globs (they match the vector's own names) or pass "
                                     "--allow-missing")
            warnings.append(msg)
    return warnings


def _validate(base: Checkpoint, vectors: list[CapabilityVector], keymaps: list[dict[str, str]], names: PrefixMap,
              allow_missing: bool) -> list[str]:
    warnings = []
    base_arch = (base.config() or {}).get("architectures")
    sample = first_names(list(base.keys()), 3)
    for vec, keys in zip(vectors, keymaps, strict=True):
        vec_arch = (vec.meta.get("architecture") or {}).get("architectures")
        # a prefix map says the layouts differ on purpose (framework file vs. its backbone's own directory)
        if base_arch and vec_arch and base_arch != vec_arch and not names:
            raise CapvectorError(
                f"{vec.path}: vector was extracted from architecture {vec_arch}, base {base.path} is {base_arch}"
            )
        missing = [n for n in keys if n not in base]
        shown = (first_names([f"{keys[n]} -> {n}" for n in missing]) + f" by prefix map {names.to_json()}" if names
                 else first_names(missing))
        if missing and len(missing) == len(keys):
            raise CapvectorError(
                f"{vec.path}: none of its {len(keys)} tensors exist in base {base.path} (first: {shown}; "
                f"the base has e.g. {sample}); is this vector for another model family"
                + (", or does the prefix map not match the base's layout?" if names else "?")
            )
        if missing:
            msg = (f"{vec.path}: {len(missing)} of {len(keys)} vector tensors are missing from base "
                   f"{base.path} (first: {shown}" + (f"; the base has e.g. {sample})" if names else ")"))
            if not allow_missing:
                raise CapvectorError(msg + "; pass --allow-missing to skip them")
            warnings.append(msg + "; skipped")
        for name, key in keys.items():
            if name not in base:
                continue
            info = base.info(name)
            if info.shape != vec.shape(key):
                raise CapvectorError(
                    f"key {name!r}: base {base.path} ({info.file}) has shape {list(info.shape)}, "
                    f"vector {vec.path} has {list(vec.shape(key))}" + (f" (as {key!r})" if key != name else "")
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
    base: Checkpoint, order: list[str], contributions: dict[str, list[Contribution]],
    out_dtypes: dict[str, torch.dtype], writer: BackgroundWriter, bar: ProgressBar, combine: Combine,
    hashed: Callable[[], Future[None]] | None = None,
) -> None:
    """Chunk by chunk: reads run ahead on a thread, fp32 arithmetic here in cache-sized blocks on two threads,
    writes behind on another thread. `hashed()`, when given, is a future for the provenance hash of everything
    read so far: an input buffer is reused only after it completes. TIES's per-tensor thresholds are found on
    the reader thread when it reaches a tensor's first chunk (two streamed passes over each vector's tensor)."""
    jobs = [(name, start, count) for name in order for start, count in row_chunks(base.info(name).shape)]
    chunk = max((count for _, _, count in jobs), default=1)
    base_item = max(i.dtype.itemsize for i in base.infos.values())
    n_vec = max((len(c) for c in contributions.values()), default=0)
    region = -(-chunk * max(base_item, 4) // 8) * 8  # 8-byte aligned so every region can be viewed as its dtype
    inputs = BufferPool(region * (1 + n_vec), count=4)
    outputs = BufferPool(chunk * max(4, *(d.itemsize for d in out_dtypes.values())), count=4)
    rules: dict[str, list[KeepRule]] = {}  # the tensor being read; jobs come in tensor order

    def keep_rules(name: str) -> list[KeepRule]:
        if name not in rules:
            rules.clear()
            shape = base.info(name).shape
            rules[name] = [combine.keep_rule(name, c.index, math.prod(shape), partial(_chunks, c, shape))
                           for c in contributions[name]]
        return rules[name]

    def load(job: tuple[str, int, int]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[KeepRule],
                                                 Future | None]:
        name, start, count = job
        keep = keep_rules(name)
        buf = inputs.acquire()
        x = base.read_flat(name, start, count, into=buf[:region])
        vs = [c.vector.read_flat(c.key, start, count, into=buf[region * (k + 1) : region * (k + 2)])
              for k, c in enumerate(contributions[name])]
        return buf, x, vs, keep, hashed() if hashed else None

    # closed on any exit: the reader thread stops before the command exits (a thread still inside a read
    # when the interpreter finalises aborts the process)
    with BlockRunner() as blocks, \
            closing(iter(Prefetcher(jobs, load, discard=lambda r: inputs.release(r[0], after=r[4])))) as items:
        for (name, start, count), (buf, x, vs, keep, done) in items:
            out_dtype = out_dtypes[name]
            out_buf = outputs.acquire()
            out = out_buf[: count * out_dtype.itemsize].view(out_dtype)
            try:
                if contributions[name]:
                    terms = [(c.weight, v, k) for c, v, k in zip(contributions[name], vs, keep, strict=True)]
                    lo, hi = combine_into(blocks, out, x, terms, combine, start)
                    if not (math.isfinite(lo) and math.isfinite(hi)):
                        raise CapvectorError(f"key {name!r}: merged values are not finite "
                                             "(check the vector and weights)")
                    check_cast(name, lo, hi, out_dtype)
                else:
                    check_cast_tensor(name, x, out_dtype)
                    out.copy_(x)
            except BaseException:
                outputs.release(out_buf)
                raise
            finally:
                inputs.release(buf, after=done)
            writer.write(name, out, done=partial(outputs.release, out_buf))
            bar.advance(count * base.info(name).dtype.itemsize)


def _chunks(contribution: Contribution, shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """The fp32 values of one vector's tensor, chunk by chunk (a TIES threshold pass)."""
    for start, count in row_chunks(shape):
        yield contribution.vector.read_flat(contribution.key, start, count)
