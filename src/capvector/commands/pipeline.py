"""The demo-pipeline commands: `capvector demo`, `pipeline`, `report`, `pretrain` and `teacher-pretrain`."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from capvector.commands.config_options import with_config_options
from capvector.errors import CapvectorError
from capvector.extras import require_extras
from capvector.pipeline.pretrain import PretrainConfig
from capvector.pipeline.teacher import TeacherConfig

JOBS_HELP = ("CPU cores to keep busy: stages whose inputs are ready run side by side (a training stage counts its "
             "threads, rollouts their workers); same results, each stage's output in RUN_DIR/logs/.")


def _finish(results: dict, run_dir: Path, started: float) -> None:
    typer.echo(f"\nreport: {run_dir / 'report.md'}  (results.json, plots and videos beside it)")
    for f in results["findings"]:
        lo, hi = f["ci95_pp"]
        typer.echo(f"  {f['claim']}: {f['diff_pp']:+.1f} pp [{lo:+.1f}, {hi:+.1f}] -> {f['verdict']}")
    typer.echo(f"total time {(time.perf_counter() - started) / 60:.1f} min")


def demo_command(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny budgets (≈1.5 min): checks the pipeline, not effects.")]
    = False,
    extended: Annotated[bool, typer.Option("--extended", help="Adds the studies: L_orth control and sweep, merge "
                                                              "choices, GSE vs LoRA, 1500 steps.")] = False,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/demo-<mode>).")] = None,
    pretrained: Annotated[Path | None, typer.Option(help="θ_pre policy dir (default: the shipped weights).")] = None,
    policy: Annotated[str, typer.Option(help="Architecture: tiny-vla | tiny-pi0 (its shipped θ_pre unless "
                                             "--pretrained).")] = "tiny-vla",
    jobs: Annotated[int, typer.Option(help=JOBS_HELP)] = 1,
) -> None:
    """The CapVector recipe end to end on the embedded MetaWorld benchmark, with a report. Reruns resume."""
    from capvector.pipeline import PipelineConfig, run_pipeline

    require_extras("sim", "plot")
    if quick and extended:
        raise CapvectorError("choose one of --quick and --extended")
    mode = "quick" if quick else "extended" if extended else "default"
    cfg = PipelineConfig.for_mode(mode, policy=policy, pretrained=str(pretrained) if pretrained else None, jobs=jobs)
    run_dir = run_dir or Path(f"runs/demo-{mode}" + ("" if policy == "tiny-vla" else f"-{policy}"))
    started = time.perf_counter()
    typer.echo(f"capvector demo ({mode} mode) in {run_dir}")
    _finish(run_pipeline(cfg, run_dir, log=typer.echo), run_dir, started)


def pipeline_command(
    config: Annotated[Path, typer.Option(help="JSON file of PipelineConfig fields (\"mode\" picks the base).")],
    run_dir: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/pipeline"),
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP + " Default: the config's \"jobs\" (1).")] = None,
) -> None:
    """Run the demo recipe with custom settings (budgets, seeds, sweeps, perturbations)."""
    from capvector.pipeline import PipelineConfig, run_pipeline

    require_extras("sim", "plot")
    cfg = PipelineConfig.from_file(config)
    if jobs is not None:
        cfg = replace(cfg, jobs=jobs)
    started = time.perf_counter()
    _finish(run_pipeline(cfg, run_dir, log=typer.echo), run_dir, started)


def report_command(run_dir: Annotated[Path, typer.Argument(help="A finished demo/pipeline run directory.")]) -> None:
    """Regenerate report.md, results.json and the plots of a finished run."""
    from capvector.pipeline import regenerate_report

    require_extras("plot")
    regenerate_report(run_dir)
    typer.echo(f"wrote {run_dir / 'report.md'}")


def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished pipeline run directories (one row each).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the table to this file.")] = None,
) -> None:
    """Set finished runs side by side: per architecture × objective, aux-SFT and CapVector against SFT."""
    from capvector.io.atomic import atomic_write_text
    from capvector.pipeline.compare import render_comparison

    table = render_comparison(run_dirs)
    if output is not None:
        atomic_write_text(output, table)
    typer.echo(table)


@with_config_options(PretrainConfig)
def pretrain_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Policy directory to write.")],
    run_dir: Annotated[Path, typer.Option(help="Stage directory (data, training, evaluation).")] = Path(
        "runs/pretrain"),
    overrides: dict[str, Any] | None = None,  # every PretrainConfig field but `policy` is an option here; those given
    image_size: Annotated[int | None, typer.Option(help="Rendered image side in pixels (default 64); demos, policy "
                                                        "and rollouts all use it.")] = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side in pixels (default 8).")] = None,
    policy_type: Annotated[str | None, typer.Option("--policy", help="Architecture: tiny-vla (default) | "
                                                                      "tiny-pi0.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Pretrain a tiny policy on the pretraining split (the recipe behind the shipped θ_pre). Reruns resume."""
    from capvector.pipeline.pretrain import pretrain
    from capvector.policy.registry import TYPE_KEY

    require_extras("sim")
    cfg = replace(PretrainConfig(), **(overrides or {}))
    shape = {k: v for k, v in (("image_size", image_size), ("patch_size", patch_size), (TYPE_KEY, policy_type))
             if v is not None}
    if shape:
        cfg = replace(cfg, policy={**cfg.policy, **shape})
    recipe = pretrain(output, cfg, run_dir, overwrite=overwrite, log=typer.echo)
    o = recipe["eval"]["overall"]
    typer.echo(f"wrote {output}: {o['pc_success']:.1f}% success on the pretraining tasks "
               f"[{o['ci95'][0]:.1f}, {o['ci95'][1]:.1f}] over {o['n_episodes']} episodes")


@with_config_options(TeacherConfig)
def teacher_pretrain_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Teacher directory to write.")],
    run_dir: Annotated[Path, typer.Option(help="Where the rendered frames are cached.")] = Path("runs/teacher"),
    overrides: dict[str, Any] | None = None,  # every TeacherConfig field is an option here; those given
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Train the frozen scene teacher (the recipe behind the shipped one). Rendered frames are cached and reused."""
    from capvector.pipeline.teacher import teacher_pretrain

    cfg = replace(TeacherConfig(), **(overrides or {}))
    recipe = teacher_pretrain(output, cfg, run_dir, overwrite=overwrite, log=typer.echo)
    q = recipe["held_out_quality"]
    typer.echo(f"wrote {output}: on held-out tasks depth error {q['depth_cm']:.1f} cm, segmentation accuracy "
               f"{100 * q['seg_acc']:.1f}%, object position error {q['object_cm']:.1f} cm")
