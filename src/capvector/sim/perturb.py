"""LIBERO-Plus-like perturbations: named variants with a severity in (0, 1], applied at reset, seeded per episode;
and scenes that hold several of them, drawn per episode or once for a whole environment (a fixed novel scene).

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
        return "none" if self.name == "none" else f"{self.name}:{_number(self.severity)}"


def _number(x: float) -> str:
    """Short form ('0.5', '1') when it reads back exactly, else the shortest exact one (labels round-trip)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def parse_perturbation(spec: str) -> Perturbation:
    """'camera:0.5' → Perturbation('camera', 0.5); a bare name means severity 1 (none → 0)."""
    name, _, sev = spec.strip().partition(":")
    try:
        severity = float(sev) if sev else (0.0 if name == "none" else 1.0)
    except ValueError:
        raise CapvectorError(f"perturbation {spec!r}: severity {sev!r} is not a number") from None
    return Perturbation(name, severity)


@dataclass(frozen=True)
class Scene:
    """Perturbations applied together at reset, each drawn from its own random stream.

    Per episode (`fixed` None) the draws come from the episode seed; a fixed scene draws them once from `fixed`,
    so every episode of the environment gets the same camera, lighting, colours and distractors (a novel
    environment held fixed) while the object layout still follows the episode seed. A part's stream is keyed by
    its name, so adding or removing another part leaves its draw unchanged; a lone per-episode perturbation keeps
    the stream it always had (datasets and evaluations recorded before scenes reproduce bit for bit).
    """

    parts: tuple[Perturbation, ...] = ()
    fixed: int | None = None

    def __post_init__(self) -> None:
        names = [p.name for p in self.parts]
        if "none" in names:
            raise CapvectorError(f"scene {self._raw()}: 'none' (the clean scene) stands alone, without other "
                                 "perturbations or '@SEED'")
        if len(set(names)) != len(names):
            raise CapvectorError(f"scene {self._raw()}: each perturbation may appear once, found {names}")
        object.__setattr__(self, "parts", tuple(sorted(self.parts, key=lambda p: PERTURBATIONS.index(p.name))))
        if self.fixed is not None:
            if not self.parts:
                raise CapvectorError(f"scene @{self.fixed}: a fixed scene needs at least one perturbation")
            if "init_noise" in names:
                raise CapvectorError(f"scene {self._raw()}: init_noise moves the hand per episode and cannot be part "
                                     "of a fixed environment")
            if not 0 <= self.fixed < 2**32:
                raise CapvectorError(f"scene {self._raw()}: the seed after '@' must be in [0, 2**32), "
                                     f"found {self.fixed}")

    def _raw(self) -> str:
        return "+".join(p.label for p in self.parts) + ("" if self.fixed is None else f"@{self.fixed}")

    @property
    def label(self) -> str:
        """'camera:0.5+colors:0.5@7'; parts in PERTURBATIONS order; 'none' for the clean scene."""
        return self._raw() if self.parts else "none"

    def streams(self, episode_seed: int) -> list[tuple[Perturbation, np.random.Generator]]:
        """Each part with the generator its draws come from in the episode with this seed."""
        seed = episode_seed if self.fixed is None else self.fixed
        if len(self.parts) == 1 and self.fixed is None:
            return [(self.parts[0], np.random.default_rng([seed, 7919]))]
        return [(p, np.random.default_rng([seed, 7919, 1 + PERTURBATIONS.index(p.name)])) for p in self.parts]


def parse_scene(spec: str) -> Scene:
    """'camera:0.5+colors:0.5+distractors:0.5@7' → a fixed scene; without '@SEED' the parts are drawn per episode;
    'camera:0.5' is the lone perturbation as before; 'none' is the clean scene."""
    body, at, seed = spec.strip().partition("@")
    fixed = None
    if at:
        if not seed.strip().isdigit():
            raise CapvectorError(f"scene {spec!r}: expected a non-negative integer seed after '@', found {seed!r}")
        fixed = int(seed)
    texts = body.split("+")
    if any(not t.strip() for t in texts):
        raise CapvectorError(f"scene {spec!r}: empty part; write NAME[:SEVERITY]+NAME[:SEVERITY][@SEED]")
    parts = [parse_perturbation(t) for t in texts]
    if len(parts) == 1 and parts[0].name == "none" and fixed is None:
        return Scene()
    return Scene(tuple(parts), fixed)


def as_scene(variant: Perturbation | Scene | None) -> Scene:
    """The scene of a reset argument: a lone perturbation is a one-part per-episode scene; None is clean."""
    if isinstance(variant, Scene):
        return variant
    if variant is None or variant.name == "none":
        return Scene()
    return Scene((variant,))


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


@dataclass(frozen=True)
class Table:
    """The world-frame box distractors stand in: x and y ranges and the table top's height (MetaWorld's default)."""

    x: tuple[float, float] = (-0.35, 0.35)
    y: tuple[float, float] = (0.45, 0.9)
    z: float = 0.0


def distractor_geoms(pert: Perturbation, rng: np.random.Generator,
                     table: Table = Table()) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(mjtGeom type, size, position, rgba) of visual-only objects standing on the table."""
    if pert.name != "distractors" or pert.severity == 0:
        return []
    import mujoco

    out = []
    for _ in range(int(np.ceil(4 * pert.severity))):
        kind = int(rng.choice([mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_SPHERE,
                               mujoco.mjtGeom.mjGEOM_CYLINDER]))
        half = rng.uniform(0.02, 0.045)
        pos = np.array([rng.uniform(*table.x), rng.uniform(*table.y), table.z + half])
        rgba = np.append(rng.uniform(0.1, 1.0, size=3), 1.0)
        out.append((kind, np.array([half, half, half]), pos, rgba))
    return out
