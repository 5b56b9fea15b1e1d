"""Training the frozen scene teacher (SceneNet): the recipe behind the shipped teacher weights.

`capvector teacher-pretrain -o DIR` renders randomised scenes of every MetaWorld v3 task (far more tasks, camera
poses, lightings, colours and distractors than any demo set), trains SceneNet to predict dense 3D structure from
the policy-resolution image, measures it on held-out tasks and writes DIR (teacher_config.json,
teacher.safetensors, recipe.json). The rendered frames are cached under the run directory, so a rerun resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_file, atomic_write_text
from capvector.train.config import cli_field

# Held out of the teacher's training frames to measure how it generalises to unseen tasks.
HELD_OUT_TASKS = ("door-close-v3", "faucet-close-v3", "reach-wall-v3", "coffee-button-v3", "push-back-v3")


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's recipe; each field is an option of `capvector teacher-pretrain`."""

    episodes_per_task: int = cli_field(5, "Randomised episodes per MetaWorld task.", flag="--episodes")
    every: int = cli_field(6, "Keep every N-th frame of an episode (at a random phase).")
    noise: float = cli_field(0.3, "σ of the Gaussian noise on the expert's actions while rendering.")
    seed: int = cli_field(7, "Seed of the scenes and of the training.")
    epochs: int = cli_field(6, "Training epochs over the rendered frames.")
    batch_size: int = cli_field(64, "Batch size.")
    lr: float = cli_field(2e-3, "Peak learning rate (one-cycle schedule).")
    threads: int = cli_field(2, "torch CPU threads.")


def _frames_to_arrays(frames: list[Any]) -> dict[str, np.ndarray]:
    """Stack SceneFrames; dense targets at half resolution (the decoder's output grid)."""
    import torch
    import torch.nn.functional as F

    image = np.stack([f.image for f in frames])
    depth = torch.from_numpy(np.stack([f.depth for f in frames]))[:, None]
    world = torch.from_numpy(np.stack([f.world for f in frames]))
    state = np.stack([f.state for f in frames])
    offset = world - torch.from_numpy(state[:, :3])[:, :, None, None]
    dense = F.avg_pool2d(torch.cat([depth.clamp(0, 10), world, offset], 1), 2).numpy().astype(np.float32)
    seg = np.stack([f.seg[::2, ::2] for f in frames]).astype(np.int64)
    return {"image": image, "dense": dense, "seg": seg, "state": state.astype(np.float32)}


def render_dataset(path: Path, tasks: list[str], cfg: TeacherConfig, log: Any = print) -> dict[str, np.ndarray]:
    """Render (or load the cached) frames of `tasks` into one compressed npz."""
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    from capvector.sim.scenes import scene_frames

    frames, tasks_of = [], []
    start = time.perf_counter()
    for task, frame in scene_frames(tasks, cfg.episodes_per_task, cfg.seed, every=cfg.every, noise=cfg.noise):
        frames.append(frame)
        tasks_of.append(task)
        if len(frames) % 500 == 0:
            log(f"[teacher] {len(frames)} frames ({time.perf_counter() - start:.0f} s)")
    arrays = _frames_to_arrays(frames) | {"task": np.array(tasks_of)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return arrays


def _normalisation(cfg: Any) -> tuple[Any, Any, Any, Any]:
    """Mean and std of the dense targets (broadcast over B, ·, H, W) and of the state, from the net's config."""
    import torch

    dm = torch.tensor(cfg.dense_mean)[None, :, None, None]
    ds = torch.tensor(cfg.dense_std)[None, :, None, None]
    return dm, ds, torch.tensor(cfg.state_mean), torch.tensor(cfg.state_std)


def _losses(net: Any, batch: dict[str, Any], seg_weight: Any) -> tuple[Any, dict[str, float]]:
    import torch.nn.functional as F

    out = net(batch["image"])
    dm, ds, sm, ss = _normalisation(net.cfg)
    dense = F.smooth_l1_loss(out["dense"], (batch["dense"] - dm) / ds, beta=0.1)
    seg = F.cross_entropy(out["seg"], batch["seg"], weight=seg_weight)
    state = F.smooth_l1_loss(out["state"], (batch["state"] - sm) / ss, beta=0.1)
    loss = dense + 0.5 * seg + 0.5 * state
    return loss, {"dense": round(dense.item(), 4), "seg": round(seg.item(), 4), "state": round(state.item(), 4)}


def measure(net: Any, data: dict[str, np.ndarray], batch: int = 256) -> dict[str, float]:
    """Held-out quality in physical units: depth and world-point error (cm), segmentation accuracy and
    object-class IoU, hand/object/goal position error (cm)."""
    import torch

    dm, ds, sm, ss = _normalisation(net.cfg)
    err = {"depth_cm": 0.0, "world_cm": 0.0, "seg_acc": 0.0, "hand_cm": 0.0, "object_cm": 0.0, "goal_cm": 0.0}
    inter = union = 0.0
    n = len(data["image"])
    with torch.no_grad():
        for i in range(0, n, batch):
            sl = slice(i, i + batch)
            out = net(torch.from_numpy(data["image"][sl]))
            dense = out["dense"] * ds + dm
            target = torch.from_numpy(data["dense"][sl])
            k = len(target)
            err["depth_cm"] += 100 * float((dense[:, 0] - target[:, 0]).abs().mean()) * k
            err["world_cm"] += 100 * float((dense[:, 1:4] - target[:, 1:4]).norm(dim=1).mean()) * k
            seg_t = torch.from_numpy(data["seg"][sl])
            seg_p = out["seg"].argmax(1)
            err["seg_acc"] += float((seg_p == seg_t).float().mean()) * k
            inter += float(((seg_p == 2) & (seg_t == 2)).sum())
            union += float(((seg_p == 2) | (seg_t == 2)).sum())
            st = out["state"] * ss + sm
            s_t = torch.from_numpy(data["state"][sl])
            for j, name in enumerate(("hand_cm", "object_cm", "goal_cm")):
                err[name] += 100 * float((st[:, 3 * j:3 * j + 3] - s_t[:, 3 * j:3 * j + 3]).norm(dim=1).mean()) * k
    out = {k: v / n for k, v in err.items()}
    out["object_iou"] = inter / max(union, 1.0)
    return out


def train_teacher(train: dict[str, np.ndarray], cfg: TeacherConfig, log: Any = print) -> Any:
    """SceneNet fitted to `train`; target normalisation measured on it and stored in the net's config."""
    import torch

    from capvector.objectives.foundation import SceneNet, SceneNetConfig

    torch.manual_seed(cfg.seed)
    dense = train["dense"]
    net_cfg = replace(SceneNetConfig(),
                      dense_mean=tuple(float(x) for x in dense.mean(axis=(0, 2, 3))),
                      dense_std=tuple(float(x) for x in dense.std(axis=(0, 2, 3)) + 1e-3),
                      state_mean=tuple(float(x) for x in train["state"].mean(0)),
                      state_std=tuple(float(x) for x in train["state"].std(0) + 1e-3))
    net = SceneNet(net_cfg)
    counts = np.bincount(train["seg"].ravel(), minlength=3).astype(np.float64)
    seg_weight = torch.tensor((counts.sum() / (3 * np.maximum(counts, 1))) ** 0.5, dtype=torch.float32)
    n = len(train["image"])
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    step, start = 0, time.perf_counter()
    net.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        for i in range(0, n, cfg.batch_size):
            idx = np.sort(order[i:i + cfg.batch_size])
            batch = {k: torch.from_numpy(train[k][idx]) for k in ("image", "dense", "seg", "state")}
            if rng.random() < 0.5:  # horizontal flip would break the world frame; jitter brightness instead
                batch["image"] = (batch["image"].float() * float(rng.uniform(0.8, 1.2))).clamp(0, 255).to(torch.uint8)
            loss, parts = _losses(net, batch, seg_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                log(f"[teacher] epoch {epoch} step {step}/{steps} loss {float(loss):.3f} {parts} "
                    f"({time.perf_counter() - start:.0f} s)")
    return net.eval().requires_grad_(False)


def teacher_pretrain(output: str | Path, cfg: TeacherConfig, run_dir: str | Path = "runs/teacher",
                     overwrite: bool = False, log: Any = print) -> dict[str, Any]:
    """Render, train, measure and write the teacher directory `output` (with recipe.json)."""
    import torch
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from capvector.policy import count_parameters

    output, run_dir = Path(output), Path(run_dir)
    if output.exists() and not overwrite:
        raise CapvectorError(f"{output} exists; pass --overwrite to replace it")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        train_tasks = [t for t in sorted(ALL_V3_ENVIRONMENTS) if t not in HELD_OUT_TASKS]
        start = time.perf_counter()
        train = render_dataset(run_dir / f"frames-train-{cfg.seed}.npz", train_tasks, cfg, log)
        held = render_dataset(run_dir / f"frames-heldout-{cfg.seed}.npz", list(HELD_OUT_TASKS),
                              replace(cfg, episodes_per_task=4, seed=cfg.seed + 1), log)
        render_s = time.perf_counter() - start
        start = time.perf_counter()
        net = train_teacher(train, cfg, log)
        train_s = time.perf_counter() - start
        quality = measure(net, held)
        log(f"[teacher] held-out tasks: {quality}")
        params = count_parameters(net)
        recipe = {"teacher_config": asdict(cfg),
                  "frames": {"train": len(train["image"]), "held_out": len(held["image"])},
                  "train_tasks": len(train_tasks), "held_out_tasks": list(HELD_OUT_TASKS), "parameters": params,
                  "render_s": round(render_s, 1), "train_s": round(train_s, 1), "held_out_quality": quality,
                  "regenerate": f"capvector teacher-pretrain -o {output} --overwrite"}
        net.save(output)
        atomic_write_text(output / "recipe.json", json.dumps(recipe, indent=2) + "\n")
        return recipe
    finally:
        torch.set_num_threads(threads)
