"""`capvector data ...`: dataset format conversion (cli.py registers it under the `data` group).

The [lerobot-data] extra (pyarrow, av) loads inside the command, so registering it costs nothing without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from capvector.extras import require_extras


def export_command(
    source: Annotated[Path, typer.Option("--input", "-i", help="capvector demo dataset (from `capvector collect`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="LeRobotDataset v3.0 directory to create.")],
    fps: Annotated[int, typer.Option(help="Frame rate for timestamps and videos (MetaWorld steps at 80 Hz).")] = 80,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write a demo dataset as LeRobotDataset v3.0 (parquet frames, lossless mp4 per camera, meta/)."""
    require_extras("lerobot-data")
    from capvector.data.lerobot import export_lerobot

    info = export_lerobot(source, output, fps=fps, overwrite=overwrite)
    summary = {"output": str(output), "episodes": info["total_episodes"], "frames": info["total_frames"],
               "tasks": info["total_tasks"], "fps": info["fps"]}
    typer.echo(json.dumps(summary) if as_json else
               f"wrote {output}: LeRobotDataset v3.0, {summary['episodes']} episodes, {summary['frames']} frames, "
               f"{summary['tasks']} tasks at {fps} fps")
