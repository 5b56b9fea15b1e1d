"""Scenes of several perturbations, per episode or fixed: labels, errors, and each part's draw against the
formula computed here from the stream it is documented to use."""

import numpy as np
import pytest

from capvector.errors import CapvectorError
from capvector.sim import SimConfig, SimEnv
from capvector.sim.perturb import PERTURBATIONS, Perturbation, Scene, parse_scene

CFG = SimConfig(image_size=32, cameras=("corner3", "topview"))
MODEL_FIELDS = ("cam_pos", "cam_quat", "light_diffuse", "light_pos", "mat_rgba", "geom_rgba")


@pytest.fixture(scope="module")
def env():
    e = SimEnv("push-v3", CFG)
    yield e
    e.close()


def _state(env) -> dict[str, np.ndarray]:
    out = {k: np.array(getattr(env.model, k)) for k in MODEL_FIELDS}
    out["extra"] = np.array([np.concatenate([[k], s, p, c]) for k, s, p, c in env.rig.extra_geoms]).reshape(-1, 11)
    return out


def _clean(env) -> dict[str, np.ndarray]:
    env.reset(0)
    return _state(env)


def _camera_expected(clean: dict, camera_ids: list[int], rng: np.random.Generator, s: float):
    """camera at severity s: each camera moves 0.12·s m along a random unit direction and yaws ±12°·s about z."""
    pos, quat = clean["cam_pos"].copy(), clean["cam_quat"].copy()
    for cid in camera_ids:
        d = rng.normal(size=3)
        pos[cid] += 0.12 * s * d / np.linalg.norm(d)
        half = np.deg2rad(12.0) * s * rng.choice([-1.0, 1.0]) / 2
        w, x, y, z = quat[cid]
        c, sn = np.cos(half), np.sin(half)  # (c, 0, 0, sn) ⊗ (w, x, y, z)
        quat[cid] = [c * w - sn * z, c * x - sn * y, c * y + sn * x, c * z + sn * w]
    return pos, quat


def _colors_expected(clean: dict, geom_matid: np.ndarray, rng: np.random.Generator, s: float):
    mat = clean["mat_rgba"].copy()
    mat[:, :3] = (1 - 0.6 * s) * mat[:, :3] + 0.6 * s * rng.uniform(0, 1, size=(len(mat), 3))
    geom = clean["geom_rgba"].copy()
    bare = geom_matid < 0
    geom[bare, :3] = (1 - 0.6 * s) * geom[bare, :3] + 0.6 * s * rng.uniform(0, 1, size=(int(bare.sum()), 3))
    return mat, geom


def _stream(seed: int, name: str | None = None) -> np.random.Generator:
    return np.random.default_rng([seed, 7919] if name is None else [seed, 7919, 1 + PERTURBATIONS.index(name)])


def test_labels_parse_back_and_name_the_canonical_order():
    scene = parse_scene("colors:0.5+camera:0.5+distractors@7")
    assert scene == Scene((Perturbation("camera", 0.5), Perturbation("colors", 0.5), Perturbation("distractors", 1.0)),
                          fixed=7)
    assert scene.label == "camera:0.5+colors:0.5+distractors:1@7"
    for spec in ("camera:0.5", "none", "lighting:0.7+init_noise:0.2", "colors:0.1234567891@0", scene.label):
        assert parse_scene(parse_scene(spec).label) == parse_scene(spec)
    assert parse_scene("camera:0.5").label == Perturbation("camera", 0.5).label == "camera:0.5"
    assert parse_scene("none") == Scene() and Scene().label == "none"


@pytest.mark.parametrize(("spec", "message"), [
    ("camera+camera:0.3", "each perturbation may appear once"),
    ("none+camera", "stands alone"),
    ("none@3", "stands alone"),
    ("camera@x", "non-negative integer seed after '@'"),
    ("camera@-1", "non-negative integer seed after '@'"),
    ("camera+", "empty part"),
    ("init_noise:0.5+camera@3", "init_noise moves the hand per episode"),
    ("camera+fog", "'fog' unknown"),
    ("camera:1.5+colors", "severity must be in"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(CapvectorError, match=message) as err:
        parse_scene(spec)
    assert "\n" not in str(err.value)


def test_a_lone_perturbation_keeps_the_draws_it_always_had(env):
    """Regression: camera:0.5 and colors:0.5 per episode draw from the stream [seed, 7919] as before scenes."""
    clean = _clean(env)
    for seed in (3, 12345):
        for variant in (Perturbation("camera", 0.5), parse_scene("camera:0.5")):
            env.reset(seed, variant)
            pos, quat = _camera_expected(clean, env.rig.camera_ids, _stream(seed), 0.5)
            assert np.array_equal(env.model.cam_pos, pos) and np.allclose(env.model.cam_quat, quat, atol=1e-12)
        env.reset(seed, parse_scene("colors:0.5"))
        mat, geom = _colors_expected(clean, env.model.geom_matid, _stream(seed), 0.5)
        assert np.allclose(env.model.mat_rgba, mat, atol=1e-6) and np.allclose(env.model.geom_rgba, geom, atol=1e-6)


def test_composite_parts_draw_from_their_own_streams(env):
    clean = _clean(env)
    env.reset(3, parse_scene("camera:0.5+colors:0.5"))
    two = _state(env)
    pos, quat = _camera_expected(clean, env.rig.camera_ids, _stream(3, "camera"), 0.5)
    mat, geom = _colors_expected(clean, env.model.geom_matid, _stream(3, "colors"), 0.5)
    assert np.array_equal(two["cam_pos"], pos) and np.allclose(two["cam_quat"], quat, atol=1e-12)
    assert np.allclose(two["mat_rgba"], mat, atol=1e-6) and np.allclose(two["geom_rgba"], geom, atol=1e-6)
    assert np.array_equal(two["light_diffuse"], clean["light_diffuse"]) and len(two["extra"]) == 0
    env.reset(3, parse_scene("distractors:0.5+camera:0.5+colors:0.5"))
    three = _state(env)
    for k in MODEL_FIELDS:  # adding distractors leaves the other parts' draws as they were
        assert np.array_equal(three[k], two[k]), k
    assert len(three["extra"]) == 2  # ⌈4 · 0.5⌉
    env.reset(3, parse_scene("lighting:0.7+distractors:0.5"))
    assert np.array_equal(_state(env)["extra"], three["extra"])
    env.reset(0)
    assert all(np.array_equal(v, clean[k]) for k, v in _state(env).items())  # undone at the next reset


def test_a_fixed_scene_is_the_same_environment_in_every_episode_with_its_own_layout(env):
    clean = _clean(env)
    scene = parse_scene("camera:0.5+colors:0.5+lighting:0.7+distractors:0.5@7")
    raw_a = env.reset(11, scene).copy()
    a = _state(env)
    image_a = env.observation()["image"]
    raw_b = env.reset(5012, scene).copy()
    b = _state(env)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(raw_a[4:7], raw_b[4:7])  # the object layout still follows the episode seed
    pos, _ = _camera_expected(clean, env.rig.camera_ids, _stream(7, "camera"), 0.5)
    assert np.array_equal(a["cam_pos"], pos)  # drawn from the scene's seed, not the episode's
    env.reset(11, parse_scene("camera:0.5+colors:0.5+lighting:0.7+distractors:0.5@8"))
    assert not np.array_equal(_state(env)["cam_pos"], a["cam_pos"])
    env.reset(11)
    assert (env.observation()["image"] != image_a).any(axis=1).mean() > 0.05
