"""Statistics of a vector or checkpoint: norms per tensor and layer, relative size, cosine, sparsity."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from capvector.errors import CapvectorError
from capvector.io import Checkpoint
from capvector.io.atomic import atomic_file
from capvector.io.hub import resolve_input
from capvector.selection import Selection, make_selection, presets
from capvector.vectors.card import read_card
from capvector.vectors.format import CapabilityVector, is_vector_dir
from capvector.vectors.stats import RunningStats, row_chunks

_LAYER = re.compile(r"^(.*?\.(?:layers|layer|h|blocks|block|resblocks)\.\d+)\.")


def layer_of(name: str) -> str:
    """Group key: the transformer block a parameter belongs to, else its parent module."""
    m = _LAYER.match(name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


class _Tensors:
    """Uniform fp32 chunk access over a vector directory or a plain checkpoint."""

    def __init__(self, path: str | Path) -> None:
        self.path = path = resolve_input(path)
        if is_vector_dir(path):
            self.vector: CapabilityVector | None = CapabilityVector(path)
            self.names = self.vector.names()
            self.shape: Callable[[str], tuple[int, ...]] = self.vector.shape
            self.read = self.vector.read_flat
            self.dtype = lambda n: self.vector.meta.get("dtype", "float32")
        else:
            self.vector = None
            ckpt = Checkpoint(path)
            self.ckpt = ckpt
            self.names = [n for n in ckpt.keys() if ckpt.info(n).is_float]
            self.shape = lambda n: ckpt.info(n).shape
            self.read = lambda n, s, c: ckpt.read_flat(n, s, c).float()
            self.dtype = lambda n: str(ckpt.info(n).dtype).removeprefix("torch.")

    @property
    def kind(self) -> str:
        return "vector" if self.vector is not None else "checkpoint"

    def close(self) -> None:
        (self.vector.checkpoint if self.vector is not None else self.ckpt).close()


def inspect(path: str | Path, *, base: str | Path | None = None, other: str | Path | None = None,
            top: int = 10, groups: str | None = None) -> dict:
    """Per-tensor and per-layer statistics as a JSON-ready dict.

    `base`: a checkpoint to report ‖τ‖/‖θ‖ against. `other`: a second vector or checkpoint for
    cosine similarity (global and per layer) over the tensors both contain. `groups`: a family whose
    registered presets `FAMILY:<group>` (e.g. `tiny-pi0:vlm`, `pi0:action_expert`) also summarise the
    statistics per parameter group (groups may overlap, as `vlm+expert` does).
    """
    if top < 0:
        raise CapvectorError(f"--top must be 0 or more, found {top}")
    selections = family_groups(groups) if groups is not None else {}
    main = _Tensors(path)
    refs: dict[str, _Tensors] = {}
    try:
        for key, p in (("base", base), ("other", other)):
            if p is not None:
                refs[key] = _Tensors(p)
        for key, ref in refs.items():
            _check_comparable(main, ref, key)
        tensors = []
        layers: dict[str, dict[str, float]] = {}
        by_group: dict[str, dict[str, float]] = {g: _new_sums() for g in selections}
        total = RunningStats()
        for name in main.names:
            row = _tensor_row(main, name, refs)
            tensors.append(row)
            total.sumsq += row["norm"] ** 2
            total.numel += row["numel"]
            total.zeros += round(row["zero_fraction"] * row["numel"])
            _add(layers.setdefault(layer_of(name), _new_sums()), row)
            for group, selection in selections.items():
                if selection.matches(name):
                    _add(by_group[group], row)
        report = {
            "path": str(main.path),
            "kind": main.kind,
            "tensors": tensors,
            "layers": [{"layer": k, **_summary(v, refs)} for k, v in layers.items()],
            "totals": {"tensors": len(tensors), "numel": total.numel, "norm": total.norm,
                       "zero_fraction": total.zeros / total.numel if total.numel else 0.0},
            "largest": [t["name"] for t in sorted(tensors, key=lambda t: -t["norm"])[:top]],
        }
        if groups is not None:
            report["groups"] = [{"group": g, "tensors": int(v["tensors"]), **_summary(v, refs)}
                                for g, v in by_group.items()]
        if main.vector is not None:
            report["meta"] = {k: v for k, v in main.vector.meta.items() if k != "tensors"}
            report["card"] = read_card(main.path)
        if "base" in refs:
            base_sq = sum(v["base_sumsq"] for v in layers.values())
            report["totals"]["rel_norm"] = total.norm / math.sqrt(base_sq) if base_sq else None
        if "other" in refs:
            dot = sum(v["dot"] for v in layers.values())
            osq = sum(v["other_sumsq"] for v in layers.values())
            report["totals"]["cosine"] = _cos(dot, total.sumsq, osq)
        return report
    finally:
        main.close()
        for ref in refs.values():
            ref.close()


def _check_comparable(main: _Tensors, ref: _Tensors, key: str) -> None:
    """A reference must share tensors with `main`, and shared names must have the same shapes: a ratio or
    cosine over a model of another size is meaningless."""
    ref_names = set(ref.names)
    shared = [n for n in main.names if n in ref_names]
    if not shared:
        raise CapvectorError(f"{ref.path}: shares no tensor name with {main.path}; cannot compare ({key})")
    differ = [n for n in shared if tuple(ref.shape(n)) != tuple(main.shape(n))]
    if differ:
        n = differ[0]
        raise CapvectorError(
            f"--{key} {ref.path}: {len(differ)} of {len(shared)} shared tensors have other shapes (first: {n!r} "
            f"is {list(ref.shape(n))} there, {list(main.shape(n))} in {main.path}); is it another model size?"
        )


def _cos(dot: float, a_sq: float, b_sq: float) -> float | None:
    return dot / math.sqrt(a_sq * b_sq) if a_sq > 0 and b_sq > 0 else None


def _tensor_row(main: _Tensors, name: str, refs: dict[str, _Tensors]) -> dict:
    shape = main.shape(name)
    stats = RunningStats()
    base_sq = dot = other_sq = 0.0
    usable = {k: r for k, r in refs.items() if name in r.names and r.shape(name) == shape}
    for start, count in row_chunks(shape):
        x = main.read(name, start, count)
        if not stats.update(x):
            raise CapvectorError(f"{main.path}: tensor {name!r} contains NaN or Inf")
        if "base" in usable:
            base_sq += float(usable["base"].read(name, start, count).double().square().sum())
        if "other" in usable:
            y = usable["other"].read(name, start, count).double()
            dot += float((x.double() * y).sum())
            other_sq += float(y.square().sum())
    row = {"name": name, "shape": list(shape), "dtype": main.dtype(name), **stats.to_json()}
    if "base" in usable:
        row["base_norm"] = math.sqrt(base_sq)
        row["rel_norm"] = stats.norm / row["base_norm"] if base_sq else None
    if "other" in usable:
        row["dot"], row["other_norm"] = dot, math.sqrt(other_sq)
        row["cosine"] = _cos(dot, stats.sumsq, other_sq)
    return row


def family_groups(family: str) -> dict[str, Selection]:
    """The registered presets `FAMILY:<group>` as {group: selection}."""
    found = {name.split(":", 1)[1]: make_selection(preset=name) for name in presets()
             if name.startswith(f"{family}:")}
    if not found:
        known = sorted({name.split(":", 1)[0] for name in presets() if ":" in name})
        raise CapvectorError(f"--groups {family!r}: no presets named {family}:<group>; families with presets: "
                             f"{', '.join(known) or 'none'}")
    return found


def _new_sums() -> dict[str, float]:
    return {"sumsq": 0.0, "base_sumsq": 0.0, "dot": 0.0, "other_sumsq": 0.0, "numel": 0, "tensors": 0}


def _add(agg: dict[str, float], row: dict) -> None:
    """Add one tensor row's squares and dot products to a layer's or group's sums."""
    agg["sumsq"] += row["norm"] ** 2
    agg["numel"] += row["numel"]
    agg["tensors"] += 1
    agg["base_sumsq"] += row.get("base_norm", 0.0) ** 2
    agg["dot"] += row.get("dot", 0.0)
    agg["other_sumsq"] += row.get("other_norm", 0.0) ** 2


def _summary(agg: dict[str, float], refs: dict) -> dict:
    row: dict = {"norm": math.sqrt(agg["sumsq"]), "numel": int(agg["numel"])}
    if "base" in refs:
        row["rel_norm"] = math.sqrt(agg["sumsq"] / agg["base_sumsq"]) if agg["base_sumsq"] else None
    if "other" in refs:
        row["cosine"] = _cos(agg["dot"], agg["sumsq"], agg["other_sumsq"])
    return row


def check_plot_path(path: str | Path) -> Path:
    """Refuse a plot path matplotlib cannot write (unknown suffix, missing folder) before any work is done."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise CapvectorError(f"plot {out}: unknown image type {out.suffix or '(no suffix)'!r}; "
                             f"use one of {', '.join('.' + f for f in sorted(formats))}")
    if not out.parent.is_dir():
        raise CapvectorError(f"plot {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise CapvectorError(f"plot {out}: is a directory")
    return out


def plot_layers(report: dict, path: str | Path) -> Path:
    """Bar chart of per-layer norms (and relative norm / cosine when present) as an image (PNG by suffix)."""
    out = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    extra = [k for k in ("rel_norm", "cosine") if layers and k in layers[0]]
    fig, axes = plt.subplots(1 + len(extra), 1, figsize=(max(6, 0.35 * len(layers)), 3 * (1 + len(extra))),
                             squeeze=False)
    labels = [row["layer"] for row in layers]
    for ax, key in zip(axes[:, 0], ["norm", *extra], strict=True):
        ax.bar(range(len(layers)), [row.get(key) or 0.0 for row in layers])
        ax.set_ylabel({"norm": "‖τ‖ (L2)", "rel_norm": "‖τ‖/‖θ‖", "cosine": "cosine"}[key])
        ax.set_xticks(range(len(layers)), labels, rotation=90, fontsize=7)
    axes[0, 0].set_title(f"{report['kind']}: {Path(report['path']).name}")
    fig.tight_layout()
    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".").lower())
    finally:
        plt.close(fig)
    return out

