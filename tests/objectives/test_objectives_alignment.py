"""Spatial alignment: loss against a direct formula, projector init, geometric teacher vs known scene geometry,
precomputed teacher round trip."""

from __future__ import annotations

import math

import pytest
import torch

from capvector.errors import CapvectorError
from capvector.objectives import (
    AlignmentProjector,
    DepthGeometryTeacher,
    PrecomputedTeacher,
    SpatialAlignment,
    backproject_world,
    cosine_alignment_loss,
    feature_key,
    write_teacher_features,
)
from capvector.train import SyntheticDemoDataset
from capvector.train.synthetic import BLOCK_HEIGHT
from testing_common import batch_of


def test_cosine_loss_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    total = 0.0
    for b in range(2):
        for t in range(5):
            p, y = pred[b, t].tolist(), target[b, t].tolist()
            dot = sum(a * c for a, c in zip(p, y, strict=True))
            total += dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(c * c for c in y)))
    assert cosine_alignment_loss(pred, target).item() == pytest.approx(1 - total / 10, abs=1e-6)
    assert cosine_alignment_loss(target * 3.0, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_alignment_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = True
    assert cosine_alignment_loss(pred, target, mask).item() == pytest.approx(
        1 - torch.nn.functional.cosine_similarity(pred[0, 1], target[0, 1], dim=0).item(), abs=1e-6)


def test_projector_init_and_spatial_alignment_composition():
    torch.manual_seed(0)
    proj = AlignmentProjector(16, 6, hidden_dim=12, layernorm=True)
    assert all(torch.count_nonzero(fc.bias) == 0 for fc in (proj.fc1, proj.fc2))
    bound = math.sqrt(6 / (16 + 12))  # Xavier-uniform bound for fc1
    assert proj.fc1.weight.abs().max() <= bound and proj.fc1.weight.std() > bound / 4
    align = SpatialAlignment(16, 6, layer=1, hidden_dim=12)
    h, y = torch.randn(3, 4, 16), torch.randn(3, 4, 6)
    z = align.projector.fc2(torch.nn.functional.gelu(align.projector.fc1(torch.nn.functional.layer_norm(h, (16,)))))
    assert torch.allclose(align(h, y), cosine_alignment_loss(z, y), atol=1e-6)
    with pytest.raises(CapvectorError, match="visual tokens"):
        align(torch.randn(3, 5, 16), y)


def test_backprojection_recovers_scene_heights():
    ds = SyntheticDemoDataset(length=4, num_cameras=2, seed=1)
    batch = batch_of(ds, [0, 1])
    world = backproject_world(batch["depth"], batch["intrinsics"], batch["cam_to_world"])
    on_block = batch["depth"] < batch["cam_to_world"][:, :, 2, 3][..., None, None] - 1e-4
    assert on_block.any() and (~on_block).any()
    torch.testing.assert_close(world[..., 2][~on_block], torch.zeros(int((~on_block).sum())), atol=1e-5, rtol=0)
    torch.testing.assert_close(world[..., 2][on_block], torch.full((int(on_block.sum()),), BLOCK_HEIGHT),
                               atol=1e-5, rtol=0)


def test_geometry_teacher_patch_statistics_match_direct_loops():
    ds = SyntheticDemoDataset(length=2, seed=2)
    batch = batch_of(ds, [0])
    raw = DepthGeometryTeacher(standardise=False)(batch, grid=8)
    assert raw.shape == (1, 64, 12)
    world = backproject_world(batch["depth"], batch["intrinsics"], batch["cam_to_world"])[0, 0]
    depth = batch["depth"][0, 0]
    for token in (0, 9, 27, 63):
        r, c = divmod(token, 8)
        pw = world[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].reshape(-1, 3)
        pd = depth[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].reshape(-1, 1)
        pts = torch.cat([pw, pd], dim=1)
        want = torch.cat([pts.mean(0), pts.min(0).values, pts.max(0).values])
        torch.testing.assert_close(raw[0, token], want, atol=1e-5, rtol=1e-5)
    std = DepthGeometryTeacher()(batch, grid=8)
    torch.testing.assert_close(std.mean(1), torch.zeros(1, 12), atol=1e-5, rtol=0)


def test_residual_teacher_keeps_only_what_differs_across_the_batch():
    ds = SyntheticDemoDataset(length=6, seed=3)
    batch = batch_of(ds, [0, 1, 2, 3])
    raw = DepthGeometryTeacher(standardise=False)(batch, grid=8)  # (4, 64, 12)
    res = DepthGeometryTeacher(centre="batch")(batch, grid=8)
    for f in (0, 5, 11):  # a few features, by hand: per-token mean over the batch, one std per feature
        col = raw[..., f]
        dev = col - col.mean(dim=0)
        expected = dev / max(float(dev.pow(2).mean().sqrt()), 1e-6)
        torch.testing.assert_close(res[..., f], expected, atol=1e-5, rtol=1e-5)
    same = batch_of(ds, [2, 2, 2])  # identical samples: nothing differs, every target is zero
    assert DepthGeometryTeacher(centre="batch")(same, grid=8).abs().max() == 0
    # Zero targets carry no direction: the loss ignores those tokens.
    pred, target = torch.randn(2, 5, 12), res[:2, :5].clone()
    target[0, 1] = 0
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, 1] = False
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=-1)
    torch.testing.assert_close(cosine_alignment_loss(pred, target), 1 - cos[keep].mean())
    with pytest.raises(CapvectorError, match="at least 2"):
        DepthGeometryTeacher(centre="batch")(batch_of(ds, [0]), grid=8)
    with pytest.raises(CapvectorError, match="centre"):
        DepthGeometryTeacher(centre="token")


def test_geometry_teacher_bad_input():
    ds = SyntheticDemoDataset(length=2)
    batch = batch_of(ds, [0])
    with pytest.raises(CapvectorError, match="not divisible"):
        DepthGeometryTeacher()(batch, grid=7)
    bad = dict(batch, intrinsics=batch["intrinsics"][:, :, :2])
    with pytest.raises(CapvectorError, match="intrinsics"):
        DepthGeometryTeacher()(bad, grid=8)
    with pytest.raises(CapvectorError, match="no 'depth'"):
        DepthGeometryTeacher()({k: v for k, v in batch.items() if k != "depth"}, grid=8)


def test_precomputed_teacher_round_trip_and_resampling(tmp_path):
    ds = SyntheticDemoDataset(length=6, num_cameras=2, seed=4, episode_len=3)
    batch = batch_of(ds, [0, 4, 5])
    geo = DepthGeometryTeacher()(batch, grid=8)  # (3, 128, 12)
    feats = {feature_key(e, s): geo[i] for i, (e, s) in enumerate(zip(batch["episode"], batch["step"], strict=True))}
    write_teacher_features(tmp_path / "feats.safetensors", feats)
    teacher = PrecomputedTeacher(tmp_path / "feats.safetensors")
    assert teacher.target_dim == 12
    torch.testing.assert_close(teacher(batch, grid=8), geo, rtol=0, atol=0)
    # A coarser (V, h, w, D) grid is bilinearly resampled: a constant map stays constant.
    write_teacher_features(tmp_path / "dir" / "a.safetensors", {"0/0": torch.ones(2, 4, 4, 12) * 3})
    out = PrecomputedTeacher(tmp_path / "dir")({"episode": torch.tensor([0]), "step": torch.tensor([0]),
                                                  "image": batch["image"][:1]}, grid=8)
    torch.testing.assert_close(out, torch.full((1, 128, 12), 3.0))
    with pytest.raises(CapvectorError, match="key '7/0' not found"):
        teacher({"episode": torch.tensor([7]), "step": torch.tensor([0]), "image": batch["image"][:1]}, grid=8)
