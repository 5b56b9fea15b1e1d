"""The geometric teacher on a real MetaWorld render: back-projected depth puts the table at world z = 0 and
surface points next to the end effector, i.e. the simulator's OpenCV camera convention and ours agree."""

from __future__ import annotations

import pytest
import torch

from capvector.objectives import DepthGeometryTeacher, backproject_world


def test_backprojected_metaworld_depth_matches_scene():
    pytest.importorskip("metaworld", reason="the simulator extra (capvector[sim]) is not installed")
    from capvector.sim.env import SimEnv

    env = SimEnv("reach-v3")
    try:
        env.reset(seed=0)
        geo = {k: torch.as_tensor(v)[None].float() for k, v in env.geometry().items()}
        hand = torch.as_tensor(env.observation()["proprio"][:3]).float()
    finally:
        env.close()
    world = backproject_world(geo["depth"], geo["intrinsics"], geo["cam_to_world"])[0]
    assert abs(float(world[..., 2].median())) < 0.02  # most of the view is the table top (z = 0)
    assert float((world - hand).norm(dim=-1).min()) < 0.1  # the gripper's surface is seen where the hand is
    targets = DepthGeometryTeacher()(geo, grid=8)
    assert targets.shape == (1, 64, 12) and torch.isfinite(targets).all()
