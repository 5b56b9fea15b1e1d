"""τ_cap = θ_aux − θ_sft, streamed tensor by tensor in fp32 into a vector directory."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from capvector._version import __version__
from capvector.errors import CapvectorError, first_names
from capvector.io import (
    AtomicOutputDir,
    BackgroundWriter,
    BufferPool,
    Checkpoint,
    ShardedWriter,
    parse_size,
    plan_resharded,
)
from capvector.io.atomic import atomic_write_json
from capvector.io.hashing import SourceHashes
from capvector.io.hub import resolve_input
from capvector.io.peft_adapter import LoraAdapter
from capvector.io.prefetch import Prefetcher
from capvector.progress import ProgressBar
from capvector.selection import Selection, make_selection
from capvector.vectors.blocks import BlockRunner, difference_into
from capvector.vectors.card import CARD_FILE, hub_id, render_card
from capvector.vectors.format import FACTOR_A, FACTOR_B, FORMAT, FORMAT_VERSION, META_FILE
from capvector.vectors.stats import RunningStats, check_cast_tensor, parse_dtype, row_chunks


@dataclass
class ExtractResult:
    path: Path
    tensors: int
    norm: float
    skipped: dict[str, list[str]] = field(default_factory=dict)


def _architecture(ckpt: Checkpoint) -> dict | None:
    cfg = ckpt.config()
    if not cfg:
        return None
    if "base_model_name_or_path" in cfg:
        return {"base_model_name_or_path": cfg.get("base_model_name_or_path")}
    return {"architectures": cfg.get("architectures"), "model_type": cfg.get("model_type")}


def extract(
    sft: str | Path,
    aux: str | Path,
    output: str | Path,
    *,
    pretrained: str | Path | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    preset: str | None = None,
    dtype: str = "fp32",
    lora_storage: str = "factored",
    allow_missing: bool = False,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    hash_sources: bool = True,
    progress: bool = True,
    default_weight: float = 1.0,
    task_set: str | None = None,
    note: str | None = None,
    base_model: str | None = None,
) -> ExtractResult:
    """Compute the capability vector between two fine-tunes of the same model and save it.

    Both inputs are full checkpoints, or both are PEFT LoRA adapters on the same base (then the
    vector is stored factored, exactly, unless `lora_storage="dense"`).
    The directory also gets a model card (`README.md`) from its metadata, so it can be shared like an
    adapter: `default_weight` is the recommended λ (what `merge` uses when no weight is given),
    `task_set` describes D_cap, `note` is free text, `base_model` a Hub id for the card (found from a
    Hub cache path or the adapters' base when not given).
    """
    if not math.isfinite(default_weight):
        raise CapvectorError(f"default weight (recommended λ) must be a finite number, found {default_weight}")
    out_dtype = parse_dtype(dtype)
    selection = make_selection(include, exclude, preset)
    sources = {"sft": resolve_input(sft), "aux": resolve_input(aux)} | (
        {"pretrained": resolve_input(pretrained)} if pretrained else {})
    ckpts = {role: Checkpoint(p) for role, p in sources.items()}
    hashes = SourceHashes()
    try:
        if hash_sources:  # before any read: every tensor byte the arithmetic reads is hashed from memory
            for c in ckpts.values():
                hashes.track(c)
        s, a = ckpts["sft"], ckpts["aux"]
        adapters = [c.kind == "peft-adapter" for c in (s, a)]
        if any(adapters) and not all(adapters):
            raise CapvectorError(
                f"one input is a PEFT adapter and the other is a full checkpoint ({s.path}: {s.kind}, "
                f"{a.path}: {a.kind}); merge the adapter into its base first or give two adapters"
            )
        builder = _LoraBuilder(s, a) if all(adapters) else _DenseBuilder(s, a)
        with AtomicOutputDir(output, overwrite, inputs=list(sources.values())) as tmp:
            unmatched = _unmatched_includes(make_selection(include), builder.candidates(), allow_missing)
            plan_specs, skipped = builder.plan(selection, allow_missing, out_dtype, lora_storage)
            if unmatched:
                skipped["unmatched_include"] = unmatched
            pre = ckpts.get("pretrained")
            if pre is not None:
                _check_against_pretrained(pre, builder.shapes, allow_missing, skipped)
            plan = plan_resharded(plan_specs, parse_size(max_shard_size), stem="vector")
            total_bytes = sum(builder.read_bytes(n) for n in builder.shapes)
            total = RunningStats()
            sharded = ShardedWriter(tmp, plan, {"format": "pt", "capvector": FORMAT})
            bar = ProgressBar("extract", total_bytes, unit="bytes", enabled=progress)
            with BackgroundWriter(sharded) as writer, bar:
                tensors_meta = builder.write_all(writer, out_dtype, total, bar,
                                                 hashed=hashes.hashed if hash_sources else None)
            if pre is not None:
                for name, entry in tensors_meta.items():
                    if name in pre:
                        pre_norm = _norm(pre, name)
                        entry["rel_norm"] = entry["norm"] / pre_norm if pre_norm > 0 else None
            arch = _architecture(ckpts.get("pretrained") or s)
            meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "tool_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "definition": "tau_cap = theta_aux - theta_sft",
                "sources": {
                    r: {"path": str(p.resolve()), "kind": ckpts[r].kind,
                        "hash": hashes.digest(ckpts[r]) if hash_sources else None}
                    for r, p in sources.items()
                },
                "architecture": arch,
                "base_model": base_model or hub_id(pretrained) or hub_id((arch or {}).get("base_model_name_or_path")),
                "selection": selection.to_json(),
                "dtype": str(out_dtype).removeprefix("torch."),
                "default_weight": float(default_weight),
                "task_set": task_set,
                "note": note,
                "totals": {"tensors": len(tensors_meta), "norm": total.norm, "numel": total.numel},
                "skipped": skipped,
                "tensors": tensors_meta,
            }
            atomic_write_json(tmp / META_FILE, meta)
            (tmp / CARD_FILE).write_text(render_card(meta, Path(output).name), encoding="utf-8")
    finally:
        hashes.shutdown()
        for c in ckpts.values():
            c.close()
    return ExtractResult(Path(output), len(tensors_meta), total.norm, skipped)


def _unmatched_includes(user: Selection, names: list[str], allow_missing: bool) -> list[str]:
    """An --include glob that matches nothing is an error (a typo), or with allow_missing a reported skip."""
    unmatched = user.unmatched_includes(names) if user.include != ("*",) else []
    if unmatched and not allow_missing:
        raise CapvectorError(
            f"--include {', '.join(map(repr, unmatched))} matches no tensor of the inputs (they have e.g. "
            f"{first_names(names, 3)}); fix the glob or pass --allow-missing"
        )
    return unmatched


def _norm(ckpt: Checkpoint, name: str) -> float:
    stats = RunningStats()
    for start, count in row_chunks(ckpt.info(name).shape):
        if not stats.update(ckpt.read_flat(name, start, count).float()):
            raise CapvectorError(f"{ckpt.path} ({ckpt.info(name).file}): key {name!r} contains NaN or Inf")
    return stats.norm


def _check_against_pretrained(
    pre: Checkpoint, shapes: dict[str, tuple[int, ...]], allow_missing: bool, skipped: dict[str, list[str]]
) -> None:
    missing = [n for n in shapes if n not in pre]
    if missing:
        if not allow_missing:
            raise CapvectorError(
                f"{pre.path}: {len(missing)} vector tensors are missing from the pretrained checkpoint "
                f"(first: {first_names(missing)}); pass --allow-missing to record them anyway"
            )
        skipped["missing_in_pretrained"] = missing
    for name, shape in shapes.items():
        if name in pre and pre.info(name).shape != shape:
            raise CapvectorError(
                f"{pre.path}: key {name!r} has shape {list(pre.info(name).shape)}, fine-tunes have {list(shape)}"
            )


class _DenseBuilder:
    """Vector from two full checkpoints, chunk by chunk."""

    def __init__(self, sft: Checkpoint, aux: Checkpoint) -> None:
        self.sft, self.aux = sft, aux
        self.shapes: dict[str, tuple[int, ...]] = {}

    def candidates(self) -> list[str]:
        return list(dict.fromkeys([*self.sft.keys(), *self.aux.keys()]))

    def plan(self, selection: Selection, allow_missing: bool, out_dtype: torch.dtype, lora_storage: str):
        s_names, a_names = selection.filter(self.sft.keys()), selection.filter(self.aux.keys())
        aux_only = [n for n in a_names if n not in self.sft]
        sft_only = [n for n in s_names if n not in self.aux]
        if (aux_only or sft_only) and not allow_missing:
            raise CapvectorError(
                f"key sets differ: {len(aux_only)} tensors only in aux {self.aux.path} "
                f"(first: {first_names(aux_only)}), "
                f"{len(sft_only)} only in sft {self.sft.path} (first: {first_names(sft_only)}). Auxiliary-only "
                "modules such as alignment projectors are never part of a vector: pass --allow-missing to skip "
                "and report them, or --exclude their names"
            )
        skipped: dict[str, list[str]] = {}
        if aux_only:
            skipped["aux_only"] = aux_only
        if sft_only:
            skipped["sft_only"] = sft_only
        specs = []
        for name in (n for n in a_names if n in self.sft):
            si, ai = self.sft.info(name), self.aux.info(name)
            if si.shape != ai.shape:
                raise CapvectorError(
                    f"key {name!r}: shape {list(si.shape)} in sft {self.sft.path} ({si.file}) but "
                    f"{list(ai.shape)} in aux {self.aux.path} ({ai.file})"
                )
            if not (si.is_float and ai.is_float):
                self._check_non_float_equal(name)
                skipped.setdefault("non_float_equal", []).append(name)
                continue
            self.shapes[name] = ai.shape
            specs.append((name, out_dtype, ai.shape))
        if not specs:
            raise CapvectorError(f"selection {selection.to_json()} matches no floating-point tensor in both inputs")
        return specs, skipped

    def _check_non_float_equal(self, name: str) -> None:
        if not torch.equal(self.sft.read(name), self.aux.read(name)):
            raise CapvectorError(
                f"key {name!r}: non-float tensor ({self.aux.info(name).dtype}) differs between sft and aux; "
                "a capability vector is defined only for floating-point parameters (exclude it with --exclude)"
            )

    def _raise_non_finite(self, name: str, start: int, count: int) -> None:
        for ckpt in (self.aux, self.sft):
            if not torch.isfinite(ckpt.read_flat(name, start, count).float()).all():
                raise CapvectorError(f"{ckpt.path} ({ckpt.info(name).file}): key {name!r} contains NaN or Inf")
        raise CapvectorError(f"key {name!r}: the difference overflows the output dtype")

    def read_bytes(self, name: str) -> int:
        si, ai = self.sft.info(name), self.aux.info(name)
        return si.numel * si.dtype.itemsize + ai.numel * ai.dtype.itemsize

    def write_all(self, writer: BackgroundWriter, out_dtype, total: RunningStats, bar,
                  hashed: Callable[[], Future[None]] | None = None) -> dict[str, dict]:
        """Stream every tensor: reads run ahead on a thread, writes behind on another.

        `hashed()`, when given, is a future for the provenance hash of everything read so far: an input buffer is
        reused only after it completes.
        """
        jobs = [(name, start, count) for name in self.shapes for start, count in row_chunks(self.shapes[name])]
        chunk = max((count for _, _, count in jobs), default=1)
        item = max(max(self.aux.info(n).dtype.itemsize, self.sft.info(n).dtype.itemsize) for n in self.shapes)
        region = -(-chunk * item // 8) * 8  # 8-byte aligned so each half can be viewed as its dtype
        inputs, outputs = BufferPool(2 * region, count=4), BufferPool(chunk * 4, count=4)

        def load(job: tuple[str, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Future | None]:
            name, start, count = job
            buf = inputs.acquire()
            a = self.aux.read_flat(name, start, count, into=buf[:region])
            s = self.sft.read_flat(name, start, count, into=buf[region:])
            return buf, a, s, hashed() if hashed else None

        stats: dict[str, RunningStats] = {name: RunningStats() for name in self.shapes}
        # closed on any exit: the reader thread stops before the command exits (a thread still inside a read
        # when the interpreter finalises aborts the process)
        with BlockRunner() as blocks, \
                closing(iter(Prefetcher(jobs, load, discard=lambda r: inputs.release(r[0], after=r[3])))) as items:
            for (name, start, count), (buf, a, s, done) in items:
                out_buf = outputs.acquire()
                try:
                    d = out_buf[: count * 4].view(torch.float32)
                    diff = difference_into(blocks, d, a, s)  # mixed dtypes computed in fp32
                finally:
                    inputs.release(buf, after=done)
                if not diff.finite:  # NaN/Inf in either input propagates into d
                    outputs.release(out_buf)
                    self._raise_non_finite(name, start, count)
                stats[name].add(diff.lo, diff.hi, diff.sumsq, diff.nonzero, count)
                if out_dtype == torch.float32:
                    writer.write(name, d, done=partial(outputs.release, out_buf))
                else:
                    check_cast_tensor(name, d, out_dtype)
                    converted = d.to(out_dtype)
                    outputs.release(out_buf)
                    writer.write(name, converted)
                bar.advance(count * (self.sft.info(name).dtype.itemsize + self.aux.info(name).dtype.itemsize))
        for st in stats.values():
            total.sumsq += st.sumsq
            total.numel += st.numel
        return {name: {"shape": list(self.shapes[name]), "storage": "dense", **st.to_json()}
                for name, st in stats.items()}


class _LoraBuilder:
    """Vector from two LoRA adapters: τ = s_aux·B_aux·A_aux − s_sft·B_sft·A_sft per module."""

    def __init__(self, sft: Checkpoint, aux: Checkpoint) -> None:
        self.sft, self.aux = LoraAdapter(sft), LoraAdapter(aux)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.storage = "factored"

    def candidates(self) -> list[str]:
        return list(dict.fromkeys([*self.sft.modules, *self.sft.dense, *self.aux.modules, *self.aux.dense]))

    def plan(self, selection: Selection, allow_missing: bool, out_dtype: torch.dtype, lora_storage: str):
        if lora_storage not in ("factored", "dense"):
            raise CapvectorError(f"lora storage must be 'factored' or 'dense', got {lora_storage!r}")
        self.storage = lora_storage
        s_names = selection.filter([*self.sft.modules, *self.sft.dense])
        a_names = selection.filter([*self.aux.modules, *self.aux.dense])
        aux_only = [n for n in a_names if n not in s_names]
        sft_only = [n for n in s_names if n not in a_names]
        if (aux_only or sft_only) and not allow_missing:
            raise CapvectorError(
                f"adapters target different parameters: {len(aux_only)} only in aux (first: {first_names(aux_only)}), "
                f"{len(sft_only)} only in sft (first: {first_names(sft_only)}); pass --allow-missing to treat a "
                "missing update as zero"
            )
        skipped: dict[str, list[str]] = {}
        copies = sorted(set(self.sft.base_copies) | set(self.aux.base_copies))
        for name in copies:
            keys = [ad.base_copies.get(name) for ad in (self.sft, self.aux)]
            if None in keys or not torch.equal(*(ad.checkpoint.read(k) for ad, k in zip((self.sft, self.aux), keys,
                                                                                         strict=True))):
                raise CapvectorError(
                    f"base weights saved with the adapters differ for {name!r} (resized or trained embeddings?); "
                    "the two fine-tunes must share the same base model"
                )
        if copies:
            skipped["base_layer_copies"] = copies
        specs = []
        for name in dict.fromkeys(a_names + s_names):
            in_lora = {name in ad.modules for ad in (self.sft, self.aux) if name in ad.modules or name in ad.dense}
            if len(in_lora) > 1:
                raise CapvectorError(f"parameter {name!r} is a LoRA module in one adapter, a full tensor in the other")
            shape = self._shape(name)
            self.shapes[name] = shape
            if in_lora == {True} and self.storage == "factored":
                rank = sum(ad.modules[name].rank for ad in (self.sft, self.aux) if name in ad.modules)
                specs.append((name + FACTOR_B, out_dtype, (shape[0], rank)))
                specs.append((name + FACTOR_A, out_dtype, (rank, shape[1])))
            else:
                specs.append((name, out_dtype, shape))
        return specs, skipped

    def _shape(self, name: str) -> tuple[int, ...]:
        shapes = set()
        for ad in (self.sft, self.aux):
            if name in ad.modules:
                shapes.add(ad.update_shape(name))
            elif name in ad.dense:
                shapes.add(ad.checkpoint.info(ad.dense[name]).shape)
        if len(shapes) != 1:
            raise CapvectorError(f"parameter {name!r} has different shapes in the two adapters: {sorted(shapes)}")
        return shapes.pop()

    def read_bytes(self, name: str) -> int:
        return 0 if name in self.aux.modules or name in self.sft.modules else 2 * math.prod(self.shapes[name]) * 4

    def _factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        bs, as_ = [], []
        for ad, sign in ((self.aux, 1.0), (self.sft, -1.0)):
            if name in ad.modules:
                b, a = ad.factors(name)
                bs.append(sign * b)
                as_.append(a)
        return torch.cat(bs, dim=1), torch.cat(as_, dim=0)

    def _dense_delta(self, name: str) -> torch.Tensor:
        if name in self.aux.modules or name in self.sft.modules:
            b, a = self._factors(name)
            return b @ a
        out = torch.zeros(self.shapes[name])
        for ad, sign in ((self.aux, 1.0), (self.sft, -1.0)):
            if name in ad.dense:
                out.add_(ad.checkpoint.read(ad.dense[name]).float(), alpha=sign)
        return out

    def write_all(self, writer: BackgroundWriter, out_dtype, total: RunningStats, bar,
                  hashed: Callable[[], Future[None]] | None = None) -> dict[str, dict]:
        """Every parameter in turn (whole tensors, freshly allocated: no buffer waits for `hashed`)."""
        return {name: self._write(name, writer, out_dtype, total, bar) for name in self.shapes}

    def _write(self, name, writer: BackgroundWriter, out_dtype, total: RunningStats, bar) -> dict:
        factored = self.storage == "factored" and (name in self.aux.modules or name in self.sft.modules)
        stats = RunningStats()
        entry: dict = {"shape": list(self.shapes[name])}
        if factored:
            b, a = self._factors(name)
            for t in (b, a):
                if not torch.isfinite(t).all():
                    raise CapvectorError(f"LoRA factors of {name!r} contain NaN or Inf")
            check_cast_tensor(name + FACTOR_B, b, out_dtype)
            check_cast_tensor(name + FACTOR_A, a, out_dtype)
            b_out, a_out = b.to(out_dtype), a.to(out_dtype)
            writer.write(name + FACTOR_B, b_out)
            writer.write(name + FACTOR_A, a_out)
            stats.update((b_out.float() @ a_out.float()).reshape(-1))
            entry |= {"storage": "factored", "rank": a.shape[0]}
        else:
            d = self._dense_delta(name)
            if not torch.isfinite(d).all():
                raise CapvectorError(f"update of {name!r} contains NaN or Inf")
            check_cast_tensor(name, d, out_dtype)
            d_out = d.to(out_dtype)
            writer.write(name, d_out)
            stats.update(d.reshape(-1))
            entry["storage"] = "dense"
        total.sumsq += stats.sumsq
        total.numel += stats.numel
        bar.advance(self.read_bytes(name))
        return entry | stats.to_json()
