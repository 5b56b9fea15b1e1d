"""The checkpoint commands (extract, merge, export-lora, inspect, presets): the core install's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from capvector.commands.common import console, emit, load_families
from capvector.errors import CapvectorError

Globs = Annotated[list[str] | None, typer.Option(metavar="<glob>", help="Name glob (repeatable).")]
FamilyOption = Annotated[str | None, typer.Option(
    help="VLA family (pi0, pi05, smolvla, openpi, openvla-oft, qwen-vla): find the weights in its run/checkpoint "
         "directories and default to its preset.")]


def extract_command(
    sft: Annotated[Path, typer.Option(help="Checkpoint fine-tuned with plain SFT (θ_sft).")],
    aux: Annotated[Path, typer.Option(help="Checkpoint fine-tuned with SFT + auxiliary objective (θ_aux).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Vector directory to create.")],
    pretrained: Annotated[Path | None, typer.Option(help="θ_pre, to validate against and record.")] = None,
    include: Globs = None,
    exclude: Globs = None,
    preset: Annotated[str | None, typer.Option(help="Named selection (see `capvector presets`).")] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype of the vector: fp32, bf16, fp16.")] = "fp32",
    lora_storage: Annotated[str, typer.Option(help="For LoRA adapters: factored (exact) or dense.")] = "factored",
    allow_missing: Annotated[bool, typer.Option(help="Skip (and report) tensors present in only one input.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest vector shard, e.g. 5GB.")] = "5GB",
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Skip content hashes of the sources.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    family: FamilyOption = None,
    default_weight: Annotated[float, typer.Option(
        help="Recommended λ, recorded in capvector.json and the card; merge uses it when given no weight.")] = 1.0,
    task_set: Annotated[str | None, typer.Option(help="What D_cap was (for the model card).")] = None,
    card_note: Annotated[str | None, typer.Option(help="Free text for the model card's Notes section.")] = None,
    base_model: Annotated[str | None, typer.Option(
        help="Hub id of θ_pre for the card's base_model (default: from a Hub cache path, else none).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """τ_cap = θ_aux − θ_sft, in fp32, streamed one tensor at a time; writes a model card (README.md) too."""
    from capvector.vectors.extract import extract as run

    load_families()
    options = dict(include=include, exclude=exclude, dtype=dtype, lora_storage=lora_storage,
                   allow_missing=allow_missing, overwrite=overwrite, max_shard_size=max_shard_size,
                   hash_sources=not no_hash, progress=sys.stderr.isatty(), default_weight=default_weight,
                   task_set=task_set, note=card_note, base_model=base_model)
    if family:
        from capvector.integrations import extract_family

        result = extract_family(family, sft, aux, output, preset=preset, pretrained=pretrained, **options)
    else:
        result = run(sft, aux, output, pretrained=pretrained, preset=preset, **options)
    summary = {"output": str(result.path), "tensors": result.tensors, "norm": result.norm,
               "skipped": {k: len(v) for k, v in result.skipped.items()}}
    emit(summary, as_json, f"wrote {result.path}: {result.tensors} tensors, ‖τ‖ = {result.norm:.6g}")
    for reason, names in result.skipped.items():
        console.print(f"skipped {len(names)} tensors ({reason}), first: {names[:3]}")


def merge_command(
    base: Annotated[Path, typer.Option(help="Pretrained checkpoint θ_pre.")],
    vector: Annotated[list[Path], typer.Option(metavar="<path>", help="Vector directory (repeatable).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged checkpoint directory to create.")],
    weight: Annotated[list[float] | None, typer.Option(
        metavar="<float>",
        help="λ per --vector (default: each vector's recommended λ, 1.0 unless its extract said otherwise).")] = None,
    weights: Annotated[list[Path] | None, typer.Option(metavar="<path>", help="JSON glob→λ file per --vector.")
                       ] = None,
    dtype: Annotated[str | None, typer.Option(help="Output float dtype (default: the base's).")] = None,
    allow_missing: Annotated[bool, typer.Option(help="Skip vector tensors absent from the base.")] = False,
    max_shard_size: Annotated[str | None, typer.Option(help="Reshard output (default: mirror the base).")] = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Skip the base's content hash.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    strip_prefix: Annotated[str | None, typer.Option(
        help="Remove this prefix from the vector's names (e.g. qwen_vl_interface.model.) before matching the base.")
    ] = None,
    add_prefix: Annotated[str | None, typer.Option(help="Put this prefix before the (stripped) vector names.")] = None,
    map_prefix: Annotated[list[str] | None, typer.Option(
        metavar="<old=new>",
        help="OLD=NEW prefix rule for vector names (repeatable; the longest matching OLD wins).")] = None,
    family: FamilyOption = None,
    combine: Annotated[str, typer.Option(
        metavar="sum|ties|dare|dare-ties",
        help="How the weighted vectors combine per tensor: their sum, or TIES/DARE sign and magnitude conflict "
             "handling (docs/capability-vectors.md).")] = "sum",
    density: Annotated[float | None, typer.Option(
        help="ties: fraction of each tensor's largest |τ| kept; dare: keep probability. In (0, 1].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of DARE's random drops (default 0, recorded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the recipe as JSON.")] = False,
) -> None:
    """θ_meta = θ_pre + Σ λ_i·τ_i (or its TIES/DARE variant), written with the base's layout, config and
    tokenizer files."""
    from capvector.vectors.combine import Combine
    from capvector.vectors.merge import VectorWeight, load_weights_file
    from capvector.vectors.merge import merge as run
    from capvector.vectors.rename import parse_prefix_rule

    how = Combine(combine, density, seed)
    if weight and weights:
        raise CapvectorError("give either --weight or --weights, not both")
    specs: list[float | dict[str, float] | None]
    if weights:
        specs = [load_weights_file(p) for p in weights]
    else:
        specs = list(weight or [None] * len(vector))
    if len(specs) == 1 and len(vector) > 1:
        specs = specs * len(vector)
    if len(specs) != len(vector):
        raise CapvectorError(f"got {len(vector)} --vector but {len(specs)} weights; give one per vector")
    items = [VectorWeight(v, w) for v, w in zip(vector, specs, strict=True)]
    options = dict(dtype=dtype, allow_missing=allow_missing, overwrite=overwrite, max_shard_size=max_shard_size,
                   hash_sources=not no_hash, progress=sys.stderr.isatty(),
                   prefix_map=[parse_prefix_rule(r) for r in map_prefix or ()],
                   strip_prefix=strip_prefix, add_prefix=add_prefix, combine=how)
    if family:
        load_families()
        from capvector.integrations import merge_family

        recipe = merge_family(family, base, items, output, **options)
    else:
        recipe = run(base, items, output, **options)
    emit(recipe, as_json, f"wrote {output}: merged {recipe['merged_tensors']} of {recipe['total_tensors']} tensors")
    for w in recipe["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


def export_lora_command(
    vector: Annotated[Path, typer.Argument(help="Factored (LoRA-derived) vector directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PEFT adapter directory to create.")],
    weight: Annotated[float, typer.Option(help="λ folded into lora_B.")] = 1.0,
    base_model: Annotated[str | None, typer.Option(help="base_model_name_or_path for the adapter config.")] = None,
    embedding: Annotated[list[str] | None, typer.Option(
        metavar="<name>", help="Module name that is an nn.Embedding (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Write λ·τ as an exact PEFT LoRA adapter (rank r_aux + r_sft)."""
    from capvector.vectors import export_peft_adapter

    out = export_peft_adapter(vector, output, weight=weight, base_model_name_or_path=base_model,
                              embedding_modules=tuple(embedding or ()), overwrite=overwrite)
    console.print(f"wrote PEFT adapter {out}")


def inspect_command(
    path: Annotated[Path, typer.Argument(help="Vector directory or checkpoint.")],
    base: Annotated[Path | None, typer.Option(help="Checkpoint for ‖τ‖/‖θ‖.")] = None,
    other: Annotated[Path | None, typer.Option(help="Second vector/checkpoint for cosine similarity.")] = None,
    top: Annotated[int, typer.Option(help="How many largest tensors to list.")] = 10,
    plot: Annotated[Path | None, typer.Option(help="Write a per-layer PNG plot here.")] = None,
    groups: Annotated[str | None, typer.Option(
        metavar="FAMILY", help="Also summarise per parameter group, the presets FAMILY:<group> "
                               "(e.g. tiny-pi0, pi0, openvla-oft; see `capvector presets`).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Per-tensor / per-layer / per-group norms, relative size, cosine between vectors, sparsity, largest modules."""
    from capvector.vectors.inspect import check_plot_path, plot_layers
    from capvector.vectors.inspect import inspect as run

    if plot:
        check_plot_path(plot)
    if groups:
        load_families()
        import capvector.policy.presets  # noqa: F401 - registers the tiny policies' tiny-vla:/tiny-pi0: groups
    report = run(path, base=base, other=other, top=top, groups=groups)
    if plot:
        plot_layers(report, plot)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    out = Console()
    _print_card(out, report.get("card"))
    totals = report["totals"]
    out.print(f"[bold]{report['kind']}[/] {report['path']}: {totals['tensors']} tensors, "
              f"{totals['numel']:,} elements, ‖·‖ = {totals['norm']:.6g}, zeros {totals['zero_fraction']:.2%}"
              + (f", ‖τ‖/‖θ‖ = {totals['rel_norm']:.4g}" if totals.get("rel_norm") is not None else "")
              + (f", cosine = {totals['cosine']:.4f}" if totals.get("cosine") is not None else ""))
    table = Table("layer", "norm", "elements", *(["‖τ‖/‖θ‖"] if base else []), *(["cosine"] if other else []))
    for row in report["layers"]:
        table.add_row(row["layer"], f"{row['norm']:.4g}", f"{row['numel']:,}",
                      *([_fmt(row.get("rel_norm"))] if base else []), *([_fmt(row.get("cosine"))] if other else []))
    out.print(table)
    if "groups" in report:
        by_group = Table("group", "tensors", "norm", "elements", *(["‖τ‖/‖θ‖"] if base else []),
                         *(["cosine"] if other else []))
        for row in report["groups"]:
            by_group.add_row(row["group"], str(row["tensors"]), f"{row['norm']:.4g}", f"{row['numel']:,}",
                             *([_fmt(row.get("rel_norm"))] if base else []),
                             *([_fmt(row.get("cosine"))] if other else []))
        out.print(by_group)
    largest = Table("largest tensors", "shape", "dtype", "norm", "max |x|", "zeros")
    by_name = {t["name"]: t for t in report["tensors"]}
    for name in report["largest"]:
        t = by_name[name]
        largest.add_row(name, "×".join(map(str, t["shape"])), t["dtype"], f"{t['norm']:.4g}",
                        f"{t['max_abs']:.3g}", f"{t['zero_fraction']:.1%}")
    out.print(largest)


def presets_command() -> None:
    """List the named selections usable with --preset."""
    from capvector.selection import presets as all_presets

    load_families()
    table = Table("preset", "include", "exclude", "description")
    for name, p in all_presets().items():
        table.add_row(name, " ".join(p.include), " ".join(p.exclude), p.description)
    Console().print(table)


def _print_card(out: Console, card: dict | None) -> None:
    """One line per summary field of a vector's model card (what it is, for what, with which λ)."""
    if card is None:
        return
    if "error" in card:
        out.print(f"[yellow]card:[/] {escape(card['file'])}: {escape(card['error'])}", highlight=False)
        return
    meta = card["metadata"]
    cv = meta.get("capvector") or {}
    sel = cv.get("selection") or {}
    fields = {
        "card": card.get("title") or card["file"],
        "base model": meta.get("base_model"),
        "task set": cv.get("task_set"),
        "recommended λ": cv.get("default_weight"),
        "selection": sel.get("preset") or " ".join(sel.get("include", [])) or None,
        "sources": ", ".join(f"{role}: {Path(src.get('path') or '?').name}" for role, src in
                             (cv.get("sources") or {}).items()) or None,
    }
    for key, value in fields.items():
        if value is not None:
            out.print(f"[bold]{key}:[/] {escape(str(value))}", highlight=False)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
