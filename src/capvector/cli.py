"""The `capvector` command line: a thin layer over the Python API.

The checkpoint commands need only the core install; the simulator, pipeline and plotting commands import their
extras when they run, and a missing extra is one line naming the pip command (exit 2).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import capvector
from capvector.cli_help import PlainHelpTyper
from capvector.errors import CapvectorError
from capvector.extras import missing_extra

app = PlainHelpTyper(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that every `with` block cleans up."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise Terminated()


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM (docker stop, kill, a batch scheduler) unwinds the stack: partial
    outputs are removed as on Ctrl-C, and the process exits 143 (128 + 15) as the shell expects."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        console.print("[bold red]error:[/] terminated (SIGTERM); partial output removed", highlight=False)
        raise typer.Exit(143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ConsoleNotices(logging.Handler):
    """Library warnings (e.g. a stale partial output removed) as one `warning:` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


@contextmanager
def _library_notices() -> Iterator[None]:
    logger, handler = logging.getLogger("capvector"), _ConsoleNotices(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CapvectorError, a file-system error or a module missing because an extra is not installed into one
    line on stderr and exit code 2; SIGTERM into cleanup and 143."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_unwinds(), _library_notices():
                return fn(*args, **kwargs)
        except CapvectorError as e:
            _fail(str(e))
        except ModuleNotFoundError as e:
            error = missing_extra(e)
            if error is None:
                raise
            _fail(str(error))
        except OSError as e:  # the environment, not our code: a file system error the library did not wrap
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))

    return wrapper


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _print_version(value: bool) -> None:
    if value:
        print(f"capvector {capvector.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    """Capability vectors (extract, merge, inspect) and VLA fine-tuning tools."""


Globs = Annotated[list[str] | None, typer.Option(metavar="<glob>", help="Name glob (repeatable).")]
FamilyOption = Annotated[str | None, typer.Option(
    help="VLA family (pi0, pi05, smolvla, openpi, openvla-oft, qwen-vla): find the weights in its run/checkpoint "
         "directories and default to its preset.")]


def _load_families() -> None:
    """Register the VLA families' presets (`pi0:vlm+expert`, ...). Imported by the commands that take
    presets or families, not at start-up, so `capvector --help` loads nothing more."""
    import capvector.integrations  # noqa: F401


@app.command()
@user_errors
def extract(
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

    _load_families()
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
    _emit(summary, as_json, f"wrote {result.path}: {result.tensors} tensors, ‖τ‖ = {result.norm:.6g}")
    for reason, names in result.skipped.items():
        console.print(f"skipped {len(names)} tensors ({reason}), first: {names[:3]}")


@app.command()
@user_errors
def merge(
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the recipe as JSON.")] = False,
) -> None:
    """θ_meta = θ_pre + Σ λ_i·τ_i, written with the base's layout, config and tokenizer files."""
    from capvector.vectors.merge import VectorWeight, load_weights_file
    from capvector.vectors.merge import merge as run
    from capvector.vectors.rename import parse_prefix_rule

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
                   strip_prefix=strip_prefix, add_prefix=add_prefix)
    if family:
        _load_families()
        from capvector.integrations import merge_family

        recipe = merge_family(family, base, items, output, **options)
    else:
        recipe = run(base, items, output, **options)
    _emit(recipe, as_json, f"wrote {output}: merged {recipe['merged_tensors']} of {recipe['total_tensors']} tensors")
    for w in recipe["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


@app.command("export-lora")
@user_errors
def export_lora(
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


@app.command()
@user_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="Vector directory or checkpoint.")],
    base: Annotated[Path | None, typer.Option(help="Checkpoint for ‖τ‖/‖θ‖.")] = None,
    other: Annotated[Path | None, typer.Option(help="Second vector/checkpoint for cosine similarity.")] = None,
    top: Annotated[int, typer.Option(help="How many largest tensors to list.")] = 10,
    plot: Annotated[Path | None, typer.Option(help="Write a per-layer PNG plot here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Per-tensor / per-layer norms, relative size, cosine between vectors, sparsity, largest modules."""
    from capvector.vectors.inspect import check_plot_path, plot_layers
    from capvector.vectors.inspect import inspect as run

    if plot:
        check_plot_path(plot)
    report = run(path, base=base, other=other, top=top)
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
    largest = Table("largest tensors", "shape", "dtype", "norm", "max |x|", "zeros")
    by_name = {t["name"]: t for t in report["tensors"]}
    for name in report["largest"]:
        t = by_name[name]
        largest.add_row(name, "×".join(map(str, t["shape"])), t["dtype"], f"{t['norm']:.4g}",
                        f"{t['max_abs']:.3g}", f"{t['zero_fraction']:.1%}")
    out.print(largest)


def _register_subsystem_commands() -> None:
    """Commands whose implementation lives with their subsystem (each module stays importable alone)."""
    from capvector.pipeline.commands import (
        demo_command,
        pipeline_command,
        pretrain_command,
        report_command,
        teacher_pretrain_command,
    )
    from capvector.sim.commands import collect_command, eval_command
    from capvector.train.cli import train_command

    for name, fn in (("demo", demo_command), ("pipeline", pipeline_command), ("report", report_command),
                     ("collect", collect_command), ("train", train_command), ("eval", eval_command),
                     ("pretrain", pretrain_command), ("teacher-pretrain", teacher_pretrain_command)):
        app.command(name)(user_errors(fn))


_register_subsystem_commands()


@app.command("eval-libero")
@user_errors
def eval_libero(
    policy: Annotated[str, typer.Option(
        help="Trained capvector policy directory, or module:callable returning an object with act() and reset().")],
    suite: Annotated[str, typer.Option(
        help="libero_spatial, libero_object, libero_goal, libero_10 or libero_90.")] = "libero_spatial",
    tasks: Annotated[str | None, typer.Option(help="Comma-separated task indices (default: all).")] = None,
    episodes: Annotated[int, typer.Option(help="Episodes per task, from the suite's fixed initial states.")] = 50,
    image_size: Annotated[int | None, typer.Option(
        help="Rendered image side (default: the policy config's image_size, else 256).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Policy steps per episode (default: the suite's).")] = None,
    wait_steps: Annotated[int, typer.Option(help="Still steps while objects settle.")] = 10,
    execute: Annotated[int | None, typer.Option(help="Actions run per chunk before re-querying (default all).")] = None,
    seed: Annotated[int, typer.Option(help="Environment seed.")] = 0,
    rotate: Annotated[bool, typer.Option(help="Rotate camera images 180° (as OpenVLA-OFT/openpi data).")] = True,
    policy_arg: Annotated[list[str] | None, typer.Option(
        metavar="<str>", help="Argument for a module:callable policy (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the eval JSON here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Roll out a policy on a LIBERO suite (needs the libero extra); success rates with 95% Wilson intervals."""
    from capvector.integrations.libero import LiberoConfig, evaluate_libero, load_policy
    from capvector.sim.commands import report_eval

    model = load_policy(policy, tuple(policy_arg or ()))
    size = image_size or getattr(getattr(model, "config", None), "image_size", None) or 256
    try:
        indices = tuple(int(t) for t in tasks.split(",")) if tasks else None
    except ValueError:
        raise CapvectorError(f"--tasks {tasks!r}: expected comma-separated integers, e.g. 0,3,7") from None
    cfg = LiberoConfig(suite=suite, tasks=indices, episodes=episodes, image_size=size, max_steps=max_steps,
                       wait_steps=wait_steps, execute=execute, seed=seed, rotate_images=rotate)
    report_eval(evaluate_libero(model, cfg).summary(), output, as_json,
                row_label=lambda row: f"{row['task'][:60]:<60}", overall_label=f"{suite}:")


@app.command()
@user_errors
def presets() -> None:
    """List the named selections usable with --preset."""
    from capvector.selection import presets as all_presets

    _load_families()
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


def _emit(data: dict, as_json: bool, line: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        Console().print(line, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
