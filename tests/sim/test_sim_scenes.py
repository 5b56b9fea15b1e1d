"""Randomised scenes for the scene teacher: labels checked against the simulator's own state through an independent
pinhole projection, and the scene randomisation really changes the rendered view."""

from __future__ import annotations

import numpy as np

from capvector.sim.env import SimEnv
from capvector.sim.scenes import SEG_CLASSES, _segment_lookup, random_scene, render_frame, scene_frames


def _pixel_of(point: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray) -> tuple[int, int]:
    """World point → (row, col) with the OpenCV pinhole model, written here from the matrices alone."""
    world_to_cam = np.linalg.inv(cam_to_world)
    p = world_to_cam[:3, :3] @ point + world_to_cam[:3, 3]
    u = intrinsics[0, 0] * p[0] / p[2] + intrinsics[0, 2]
    v = intrinsics[1, 1] * p[1] / p[2] + intrinsics[1, 2]
    return int(v), int(u)


def test_labels_agree_with_the_simulator_state():
    env = SimEnv("door-close-v3")
    try:
        env.reset(5)
        frame = render_frame(env, _segment_lookup(env.model))
        assert frame.image.shape == (3, 64, 64) and frame.seg.shape == (64, 64) and frame.world.shape == (3, 64, 64)
        assert set(np.unique(frame.seg)) <= set(range(len(SEG_CLASSES)))
        assert (frame.seg == 1).sum() > 50 and (frame.seg == 2).sum() > 20  # the arm and the door are in view
        hand = env.raw_obs[0:3]
        assert np.allclose(frame.state[:3], hand)
        # Around the pixel where the hand projects (its centre is the gap between the fingers) the labels show the
        # robot, and those pixels' 3D points lie on the gripper, a few centimetres from the hand.
        row, col = _pixel_of(hand, frame.intrinsics, frame.cam_to_world)
        window = (slice(row - 2, row + 3), slice(col - 2, col + 3))
        robot = frame.seg[window] == 1
        assert robot.any()
        points = frame.world[:, window[0], window[1]][:, robot].T
        assert np.linalg.norm(points - hand, axis=1).min() < 0.08
        # The world point at the pixel where the door handle (MetaWorld's object position) projects lies within a
        # few centimetres of it along the viewing ray's surface.
        row, col = _pixel_of(env.raw_obs[4:7], frame.intrinsics, frame.cam_to_world)
        assert 0 <= row < 64 and 0 <= col < 64
        assert np.linalg.norm(frame.world[:, row, col] - env.raw_obs[4:7]) < 0.12
    finally:
        env.close()


def test_random_scenes_change_the_view_but_not_the_labels_semantics():
    env = SimEnv("reach-v3")
    try:
        env.reset(3)
        plain = render_frame(env, _segment_lookup(env.model))
        env.reset(3)
        random_scene(env, np.random.default_rng(11))
        varied = render_frame(env, _segment_lookup(env.model))
        assert np.abs(plain.image.astype(int) - varied.image.astype(int)).mean() > 5
        assert np.allclose(plain.state, varied.state)  # same layout, only the rendering changed
    finally:
        env.close()
    frames = list(scene_frames(["reach-v3"], episodes_per_task=1, seed=0, every=5))
    assert frames and all(task == "reach-v3" for task, _ in frames)
