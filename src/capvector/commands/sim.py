"""The simulator commands: `capvector collect`, `capvector eval` (embedded MetaWorld) and `capvector eval-libero`.

The simulator (the [sim] extra) and LIBERO (the [libero] extra) load inside the commands, so registering them
costs nothing without them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capvector.errors import CapvectorError
from capvector.sim.perturb import parse_scene
from capvector.sim.tasks import split_tasks
from capvector.train.policies import open_policy

if TYPE_CHECKING:
    from capvector.sim.env import SimConfig


def _sim_config(image_size: int, cameras: str, max_steps: int) -> SimConfig:
    from capvector.sim.env import SimConfig

    return SimConfig(image_size=image_size, cameras=tuple(c.strip() for c in cameras.split(",") if c.strip()),
                     max_steps=max_steps)


def collect_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset directory to create or resume.")],
    split: Annotated[str, typer.Option(help="pretrain | cap | down | ood, or comma-separated task names.")],
    episodes: Annotated[int, typer.Option(help="Successful episodes per task.")] = 10,
    seed: Annotated[int, typer.Option(help="Base seed of the episode layouts.")] = 0,
    noise: Annotated[float, typer.Option(help="Std of Gaussian noise on executed expert actions.")] = 0.0,
    image_size: Annotated[int, typer.Option(help="Rendered image side in pixels.")] = 64,
    cameras: Annotated[str, typer.Option(help="Comma-separated MuJoCo camera names (1 or 2).")] = "corner3",
    max_steps: Annotated[int, typer.Option(help="Episode step limit.")] = 200,
    keep_failed: Annotated[bool, typer.Option(help="Also keep episodes the expert failed.")] = False,
    perturb: Annotated[str, typer.Option(
        help="Every episode's scene: NAME[:SEVERITY] joined by '+', e.g. camera:0.5 (a camera pose per episode); "
             "'@SEED' holds it fixed: camera:0.5+colors:0.5@7 is one novel environment.")] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Record scripted-expert demonstrations (images, depth, camera geometry, proprio, actions)."""
    from capvector.data.collect import collect

    if episodes < 1:
        raise CapvectorError(f"--episodes: expected ≥ 1, found {episodes}")
    manifest = collect(output, split_tasks(split), episodes, seed=seed, noise=noise,
                       sim=_sim_config(image_size, cameras, max_steps), keep_failed=keep_failed,
                       progress=sys.stderr.isatty(), split=split, perturbation=parse_scene(perturb))
    eps = manifest["episodes"]
    summary = {"output": str(output), "episodes": len(eps), "steps": sum(e["length"] for e in eps),
               "bytes": sum(e["bytes"] for e in eps), "collect_s": manifest["collect_s"]}
    typer.echo(json.dumps(summary) if as_json else
               f"wrote {output}: {summary['episodes']} episodes, {summary['steps']} steps, "
               f"{summary['bytes'] / 1e6:.1f} MB in {summary['collect_s']:.1f} s")


def eval_command(
    policy: Annotated[str, typer.Option(
        help="Trained policy or run directory, 'expert', or module:callable returning an object with act() and "
             "reset().")],
    split: Annotated[str, typer.Option(help="pretrain | cap | down | ood, or comma-separated task names.")],
    episodes: Annotated[int, typer.Option(help="Episodes per task and variant.")] = 10,
    seed: Annotated[int, typer.Option(help="Base seed (episode layouts and perturbations).")] = 1000,
    perturb: Annotated[list[str] | None, typer.Option(
        metavar="<name[:severity]>",
        help="Variant NAME[:SEVERITY] (repeatable): none, camera, lighting, colors, distractors, init_noise; "
             "'+' combines them, '@SEED' holds them fixed (e.g. camera:0.5+colors:0.5@7).")] = None,
    execute: Annotated[int | None, typer.Option(help="Actions run per chunk before re-querying (default all).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    image_size: Annotated[int, typer.Option(help="Rendered image side in pixels.")] = 64,
    cameras: Annotated[str, typer.Option(help="Comma-separated MuJoCo camera names (1 or 2).")] = "corner3",
    max_steps: Annotated[int, typer.Option(help="Episode step limit.")] = 200,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write eval_info JSON here.")] = None,
    videos: Annotated[int, typer.Option(help="Record the first N episodes per task/variant as GIF.")] = 0,
    video_dir: Annotated[Path | None, typer.Option(help="Folder for videos (default: beside --output).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Roll out a policy in the simulator; success rates with 95% Wilson intervals."""
    from capvector.sim.evaluate import EvalConfig, evaluate

    perts = tuple(parse_scene(p) for p in (perturb or ["none"]))
    if videos and video_dir is None:
        video_dir = (output.parent if output else Path(".")) / "videos"
    cfg = EvalConfig(tasks=tuple(split_tasks(split)), episodes=episodes, seed=seed, perturbations=perts,
                     execute=execute, workers=workers, sim=_sim_config(image_size, cameras, max_steps),
                     videos=videos, video_dir=str(video_dir) if video_dir else None)
    model = open_policy(policy, experts=True)
    pcfg = getattr(model, "config", None)
    for field, want in (("image_size", cfg.sim.image_size), ("num_cameras", len(cfg.sim.cameras))):
        have = getattr(pcfg, field, None)
        if isinstance(have, int) and have != want:
            raise CapvectorError(f"--policy {policy}: policy config {field}={have} but the simulator is set to "
                                 f"{want}; pass matching --image-size / --cameras")
    report_eval(evaluate(model, cfg).summary(), output, as_json,
                row_label=lambda row: f"{row['task']:<26} {row['variant']:<16}", overall_label="overall")


def eval_libero_command(
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
    from capvector.sim.libero import LiberoConfig, evaluate_libero

    model = open_policy(policy, tuple(policy_arg or ()))
    size = image_size or getattr(getattr(model, "config", None), "image_size", None) or 256
    try:
        indices = tuple(int(t) for t in tasks.split(",")) if tasks else None
    except ValueError:
        raise CapvectorError(f"--tasks {tasks!r}: expected comma-separated integers, e.g. 0,3,7") from None
    cfg = LiberoConfig(suite=suite, tasks=indices, episodes=episodes, image_size=size, max_steps=max_steps,
                       wait_steps=wait_steps, execute=execute, seed=seed, rotate_images=rotate)
    report_eval(evaluate_libero(model, cfg).summary(), output, as_json,
                row_label=lambda row: f"{row['task'][:60]:<60}", overall_label=f"{suite}:")


def report_eval(result: dict, output: Path | None, as_json: bool, row_label: Callable[[dict], str],
                overall_label: str) -> None:
    """Write an eval summary to `output` (JSON) and print it: one JSON line, or a line per task and a total."""
    from capvector.io.atomic import atomic_write_json

    if output:
        atomic_write_json(output, result)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for row in result["per_task"]:
        lo, hi = row["ci95"]
        typer.echo(f"{row_label(row)} {row['pc_success']:5.1f}% [{lo:5.1f}, {hi:5.1f}]  len {row['avg_length']:.0f}")
    o = result["overall"]
    typer.echo(f"{overall_label} {o['pc_success']:.1f}% [{o['ci95'][0]:.1f}, {o['ci95'][1]:.1f}] "
               f"over {o['n_episodes']} episodes, {o['eval_ep_s']:.2f} s/episode")
