"""LIBERO-Plus-like perturbations: named variants with a severity in (0, 1], applied at reset, seeded per episode.

Model-side variants (camera pose, lighting, colours) edit the env's own MjModel copy and are undone at the
next reset; distractors are extra visual-only geoms added to the rendered scene (no physics); initial-state
noise moves the hand with random actions before the episode starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capvector.errors import CapvectorError

PERTURBATIONS = ("none", "camera", "lighting", "colors", "distractors", "init_noise")


@dataclass(frozen=True)
class Perturbation:
    """One named variant; `severity` scales its magnitude (0 = unperturbed)."""

    name: str = "none"
    severity: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in PERTURBATIONS:
            raise CapvectorError(f"perturbation {self.name!r} unknown; choose from {list(PERTURBATIONS)}")
        if not 0.0 <= self.severity <= 1.0:
            raise CapvectorError(f"perturbation {self.name}: severity must be in [0, 1], found {self.severity}")

    @property
    def label(self) -> str:
        return "none" if self.name == "none" else f"{self.name}:{self.severity:g}"


def parse_perturbation(spec: str) -> Perturbation:
    """'camera:0.5' → Perturbation('camera', 0.5); a bare name means severity 1 (none → 0)."""
    name, _, sev = spec.strip().partition(":")
    try:
        severity = float(sev) if sev else (0.0 if name == "none" else 1.0)
    except ValueError:
        raise CapvectorError(f"perturbation {spec!r}: severity {sev!r} is not a number") from None
    return Perturbation(name, severity)


def _quat_z(angle: float) -> np.ndarray:
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def apply_to_model(model, pert: Perturbation, rng: np.random.Generator, camera_ids: list[int]) -> None:
    """Edit `model` in place (caller restores the originals before the next episode)."""
    s = pert.severity
    if pert.name == "camera":
        for cid in camera_ids:
            direction = rng.normal(size=3)
            model.cam_pos[cid] += 0.12 * s * direction / np.linalg.norm(direction)
            angle = np.deg2rad(12.0) * s * rng.choice([-1.0, 1.0])
            model.cam_quat[cid] = _quat_mul(_quat_z(angle), model.cam_quat[cid])
    elif pert.name == "lighting":
        factor = 1.0 + s * rng.choice([-0.7, 0.8])
        model.light_diffuse[:] = np.clip(model.light_diffuse * factor, 0, 1)
        model.light_pos[:] += rng.normal(scale=0.5 * s, size=model.light_pos.shape)
        model.vis.headlight.diffuse[:] = np.clip(np.asarray(model.vis.headlight.diffuse) * factor, 0, 1)
    elif pert.name == "colors":
        tint = rng.uniform(0, 1, size=(model.nmat, 3))
        model.mat_rgba[:, :3] = (1 - 0.6 * s) * model.mat_rgba[:, :3] + 0.6 * s * tint
        no_mat = model.geom_matid < 0
        tint = rng.uniform(0, 1, size=(int(no_mat.sum()), 3))
        model.geom_rgba[no_mat, :3] = (1 - 0.6 * s) * model.geom_rgba[no_mat, :3] + 0.6 * s * tint


def distractor_geoms(pert: Perturbation, rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray,
                                                                                     np.ndarray]]:
    """(mjtGeom type, size, position, rgba) of visual-only objects standing on the table (z = 0)."""
    if pert.name != "distractors" or pert.severity == 0:
        return []
    import mujoco

    out = []
    for _ in range(int(np.ceil(4 * pert.severity))):
        kind = int(rng.choice([mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_SPHERE,
                               mujoco.mjtGeom.mjGEOM_CYLINDER]))
        half = rng.uniform(0.02, 0.045)
        pos = np.array([rng.uniform(-0.35, 0.35), rng.uniform(0.45, 0.9), half])
        rgba = np.append(rng.uniform(0.1, 1.0, size=3), 1.0)
        out.append((kind, np.array([half, half, half]), pos, rgba))
    return out
