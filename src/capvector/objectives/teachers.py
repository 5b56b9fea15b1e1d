"""Frozen geometric teachers: per-visual-token target features for the spatial-alignment objective.

A teacher maps a collated batch (see the data contract in docs/policy.md) to targets of shape
(B, V·N, D), camera-major then row-major patches, the same order as the policy's visual tokens.

- `DepthGeometryTeacher`: from the simulator's metric depth, intrinsics and cam_to_world (OpenCV
  convention), back-projects every pixel to world xyz and summarises each patch.
- `PrecomputedTeacher`: reads features computed offline (e.g. VGGT) from safetensors files keyed
  "<episode>/<step>" — the path a user with a real model takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import safe_open

from capvector.errors import CapvectorError
from capvector.geometry import backproject_world
from capvector.objectives.batch import batch_tensor
from capvector.objectives.features import feature_key


class Teacher(Protocol):
    """Anything that turns a batch into per-token targets; it is frozen (no parameters are trained)."""

    target_dim: int

    def __call__(self, batch: Mapping[str, Any], grid: int) -> torch.Tensor: ...


class DepthGeometryTeacher:
    """Per patch: mean/min/max of world x, y, z and of depth (12 features), then centred.

    `centre="sample"`: each feature is standardised over the tokens of a sample (zero mean, unit std), so
    the targets describe where a patch sits relative to the rest of the scene, which is what a cosine can
    compare. With a fixed camera most of that is the static table, predictable from a token's position
    alone. `centre="batch"`: each token's features minus that token's mean over the batch, scaled by the
    feature's std over the batch: what remains is where the scene *differs* from the usual one (objects,
    the arm, their heights and distances), and static background tokens get (near) zero targets, which
    are dropped from the loss. Needs a batch sharing one camera placement.
    Depth is clamped to [0, max_depth] (non-finite → max_depth) so sky/far-plane pixels stay bounded.
    """

    target_dim = 12

    def __init__(self, max_depth: float = 10.0, standardise: bool = True, centre: str = "sample") -> None:
        if centre not in ("sample", "batch"):
            raise CapvectorError(f"geometry teacher: centre must be 'sample' or 'batch', found {centre!r}")
        self.max_depth = max_depth
        self.standardise = standardise
        self.centre = centre

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any], grid: int) -> torch.Tensor:
        depth = batch_tensor(batch, "depth", 4, "teacher").float()
        intr = batch_tensor(batch, "intrinsics", 4, "teacher").float()
        pose = batch_tensor(batch, "cam_to_world", 4, "teacher").float()
        b, v, h, w = depth.shape
        if tuple(intr.shape) != (b, v, 3, 3) or tuple(pose.shape) != (b, v, 4, 4):
            raise CapvectorError(
                f"teacher: expected intrinsics ({b}, {v}, 3, 3) and cam_to_world ({b}, {v}, 4, 4) for depth "
                f"{tuple(depth.shape)}; found {tuple(intr.shape)} and {tuple(pose.shape)}"
            )
        if h % grid or w % grid:
            raise CapvectorError(f"teacher: depth {h}x{w} is not divisible into a {grid}x{grid} patch grid")
        depth = torch.nan_to_num(depth, nan=self.max_depth, posinf=self.max_depth, neginf=0.0)
        depth = depth.clamp(0.0, self.max_depth)
        world = backproject_world(depth, intr, pose)  # (B,V,H,W,3)
        maps = torch.cat([world.permute(0, 1, 4, 2, 3), depth.unsqueeze(2)], dim=2)  # (B,V,4,H,W)
        maps = maps.reshape(b * v, 4, h, w)
        k = (h // grid, w // grid)
        feats = torch.cat(
            [F.avg_pool2d(maps, k), -F.max_pool2d(-maps, k), F.max_pool2d(maps, k)], dim=1
        )  # (B·V, 12, g, g): mean xyz d, min xyz d, max xyz d
        feats = feats.reshape(b, v, 12, grid * grid).permute(0, 1, 3, 2).reshape(b, v * grid * grid, 12)
        if not self.standardise:
            return feats
        if self.centre == "batch":
            if b < 2:
                raise CapvectorError("geometry teacher: centre='batch' needs batches of at least 2 samples")
            dev = feats.double() - feats.double().mean(dim=0, keepdim=True)
            dev = torch.where(dev.abs() < 1e-5, torch.zeros_like(dev), dev)  # rounding, not scene: exactly 0
            return (dev / dev.std(dim=(0, 1), keepdim=True, unbiased=False).clamp_min(1e-3)).float()
        mean = feats.mean(dim=1, keepdim=True)
        std = feats.std(dim=1, keepdim=True, unbiased=False)
        return (feats - mean) / std.clamp_min(1e-6)


class PrecomputedTeacher:
    """Features from safetensors files (one file, or every *.safetensors in a directory) keyed "<episode>/<step>".

    A stored tensor is (V, h, w, D) (bilinearly resampled to the policy grid when h, w differ),
    (V·N, D) or (N, D) for one camera. Files are opened lazily; each key is read when needed.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise CapvectorError(f"precomputed teacher: no safetensors feature file at {path}")
        self.path = path
        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    if key in self._where:
                        raise CapvectorError(f"precomputed teacher: key {key!r} is in both {self._where[key]} and {f}")
                    self._where[key] = f
        if not self._where:
            raise CapvectorError(f"precomputed teacher: {path} holds no tensors")
        first = next(iter(self._where))
        self.target_dim = int(self._read(first).shape[-1])

    def _read(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise CapvectorError(f"precomputed teacher: key {key!r} not found in {self.path}")
        with safe_open(str(self._where[key]), framework="pt") as sf:
            return sf.get_tensor(key).float()

    def _to_tokens(self, t: torch.Tensor, key: str, grid: int, views: int) -> torch.Tensor:
        n = grid * grid
        if t.dim() == 4:
            if t.shape[0] != views:
                raise CapvectorError(f"precomputed teacher: {key!r} has {t.shape[0]} views, the batch has {views}")
            if t.shape[1:3] != (grid, grid):
                t = F.interpolate(t.permute(0, 3, 1, 2), size=(grid, grid), mode="bilinear", align_corners=False)
                t = t.permute(0, 2, 3, 1)
            t = t.reshape(views * n, t.shape[-1])
        elif t.dim() != 2 or t.shape[0] != views * n:
            raise CapvectorError(
                f"precomputed teacher: {key!r} has shape {tuple(t.shape)}; expected ({views}, h, w, D) or "
                f"({views * n}, D)"
            )
        if t.shape[-1] != self.target_dim:
            raise CapvectorError(f"precomputed teacher: {key!r} has width {t.shape[-1]}, expected {self.target_dim}")
        return t

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any], grid: int) -> torch.Tensor:
        episodes = torch.as_tensor(batch_tensor(batch, "episode", 1, "teacher")).tolist()
        steps = torch.as_tensor(batch_tensor(batch, "step", 1, "teacher")).tolist()
        views = int(torch.as_tensor(batch["image"]).shape[1]) if "image" in batch else 1
        rows = []
        for e, s in zip(episodes, steps, strict=True):
            key = feature_key(e, s)
            rows.append(self._to_tokens(self._read(key), key, grid, views))
        return torch.stack(rows)


TEACHERS = ("foundation", "geometry", "geometry-residual", "precomputed", "subgoal", "latent-reasoning")
_PLAN_OBJECTIVES = {"subgoal": "sub-goal prediction", "latent-reasoning": "latent reasoning"}


def objective_name(teacher: str) -> str:
    """What the auxiliary loss built with this teacher is called in reports."""
    return _PLAN_OBJECTIVES.get(teacher, "spatial alignment")


def make_teacher(kind: str, path: str | Path | None = None) -> Teacher:
    """'foundation' (the frozen scene network's features; `path` = a teacher directory, default the shipped one),
    'geometry' (simulator depth, centred per sample), 'geometry-residual' (centred per token over the batch) or
    'precomputed' (needs `path`); 'subgoal' gives plan targets for the action queries instead
    (capvector.objectives.subgoal: another objective family, same α and layer options), 'latent-reasoning' the same
    targets for latent thought tokens (capvector.objectives.latent)."""
    if kind == "foundation":
        from capvector.objectives.foundation import FoundationTeacher, SceneNet, default_teacher_dir

        return FoundationTeacher(SceneNet.load(path or default_teacher_dir()))
    if kind == "geometry":
        return DepthGeometryTeacher()
    if kind == "geometry-residual":
        return DepthGeometryTeacher(centre="batch")
    if kind == "subgoal":
        from capvector.objectives.subgoal import SubgoalTeacher

        return SubgoalTeacher()
    if kind == "latent-reasoning":
        from capvector.objectives.subgoal import SubgoalTeacher

        return SubgoalTeacher(reads="thoughts")
    if kind == "precomputed":
        if path is None:
            raise CapvectorError("teacher 'precomputed' needs a feature path (--teacher-path)")
        return PrecomputedTeacher(path)
    raise CapvectorError(f"unknown teacher {kind!r}; expected one of {', '.join(TEACHERS)}")
