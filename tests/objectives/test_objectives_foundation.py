"""The frozen scene teacher: save/load round trip, teacher targets equal the network's own features on the policy's
images, resampling to other token grids, and a trainer run that aligns to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capvector.errors import CapvectorError
from capvector.objectives import make_teacher
from capvector.objectives.foundation import FoundationTeacher, SceneNet, SceneNetConfig
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer
from testing_common import small_config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = SceneNet(SceneNetConfig(widths=(8, 16, 16), feature_dim=16, dense_std=(2.0,) * 7))
    return net.save(tmp_path_factory.mktemp("teacher") / "scene")


def test_save_load_round_trip_is_exact(teacher_dir):
    a = SceneNet.load(teacher_dir)
    b = SceneNet.load(teacher_dir)
    assert a.cfg == b.cfg and a.cfg.dense_std == (2.0,) * 7
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(a(images)["features"], b(images)["features"])
    assert not any(p.requires_grad for p in a.parameters())
    (teacher_dir / "teacher.safetensors").rename(teacher_dir / "gone.safetensors")
    try:
        with pytest.raises(CapvectorError, match="teacher.safetensors"):
            SceneNet.load(teacher_dir)
    finally:
        (teacher_dir / "gone.safetensors").rename(teacher_dir / "teacher.safetensors")


def test_targets_are_the_features_of_each_view_in_token_order(teacher_dir):
    net = SceneNet.load(teacher_dir)
    teacher = make_teacher("foundation", teacher_dir)
    assert isinstance(teacher, FoundationTeacher) and teacher.target_dim == 16
    images = torch.randint(0, 256, (3, 2, 3, 64, 64), dtype=torch.uint8)  # two cameras
    out = teacher({"image": images}, grid=8)
    assert out.shape == (3, 2 * 64, 16)
    for b in range(3):
        for v in range(2):
            feats = net.features(images[b, v][None])[0]  # (D, 8, 8), row-major patches
            for row, col in ((0, 0), (3, 5), (7, 7)):
                assert torch.allclose(out[b, v * 64 + row * 8 + col], feats[:, row, col], atol=1e-4)
    # a policy with a 4×4 grid gets the same features bilinearly resampled
    small = teacher({"image": images[:, :1]}, grid=4)
    direct = F.interpolate(net.features(images[:, 0]), size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(small, direct.flatten(2).transpose(1, 2), atol=1e-4)
    with pytest.raises(CapvectorError, match="no 'image'"):
        teacher({"depth": images}, grid=8)


def test_trainer_aligns_to_the_teacher_and_pays_its_cost(tmp_path, teacher_dir):
    ds = SyntheticDemoDataset(length=32, chunk=4, seed=3, episode_len=8)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), steps=4, batch_size=8, lr=3e-3, warmup_steps=0, log_every=1,
                      progress=False, seed=7, aux_weight=0.5, aux_layer=1, teacher="foundation",
                      teacher_path=str(teacher_dir))
    trainer = Trainer(cfg, ds, policy_config=small_config())
    result = trainer.train()
    assert isinstance(trainer.teacher, FoundationTeacher)
    aligned = [r["align"] for r in result.history if "align" in r]
    assert len(aligned) == 4 and all(0.0 < a < 2.0 for a in aligned)


def test_precomputed_features_give_the_per_batch_targets(tmp_path, teacher_dir):
    from torch.utils.data import default_collate

    from capvector.objectives import PrecomputedTeacher
    from capvector.objectives.foundation import precompute_features

    ds = SyntheticDemoDataset(length=20, chunk=4, seed=3, episode_len=8)
    path = precompute_features(SceneNet.load(teacher_dir), ds, tmp_path / "feats.safetensors", batch_size=7)
    batch = default_collate([ds[i] for i in (0, 5, 19)])
    live = make_teacher("foundation", teacher_dir)(batch, grid=8)
    stored = PrecomputedTeacher(path)(batch, grid=8)
    assert stored.shape == live.shape and torch.allclose(stored, live, atol=1e-4)


def test_the_shipped_teacher_loads_with_its_recipe():
    import json

    from capvector.assets import scene_teacher_dir

    net = SceneNet.load(scene_teacher_dir())
    assert net.cfg.feature_dim == 128 and sum(p.numel() for p in net.parameters()) < 30e6 / 4  # ≤ 30 MB in fp32
    recipe = json.loads((scene_teacher_dir() / "recipe.json").read_text())
    assert recipe["train_tasks"] == 45 and recipe["held_out_quality"]["seg_acc"] > 0.9
    out = make_teacher("foundation")({"image": torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8)}, grid=8)
    assert out.shape == (1, 64, 128) and torch.isfinite(out).all()


@pytest.mark.long
def test_teacher_recipe_fits_its_labels_and_measures_in_physical_units():
    import numpy as np

    from capvector.pipeline.teacher import TeacherConfig, measure, train_teacher

    rng = np.random.default_rng(0)
    n = 16  # two batches an epoch: the depth error falls to 0.30× of the untrained net's (0.24× with 24 images)
    image = rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
    brightness = image.astype(np.float32).mean(axis=1)  # a label the net can learn from the pixels
    dense = np.repeat(brightness[:, None, ::2, ::2] / 255.0 * 2.0, 7, axis=1).astype(np.float32)
    data = {"image": image, "dense": dense, "seg": (brightness[:, ::2, ::2] > 127).astype(np.int64),
            "state": rng.normal(size=(n, 9)).astype(np.float32)}
    cfg = TeacherConfig(epochs=12, batch_size=8, lr=3e-3, threads=1)
    before = measure(train_teacher(data, TeacherConfig(epochs=1, batch_size=8, lr=1e-9, threads=1)), data)
    after = measure(train_teacher(data, cfg), data)
    assert after["depth_cm"] < 0.5 * before["depth_cm"]  # metres → cm of the depth channel
    assert all(np.isfinite(v) for v in after.values()) and 0.0 <= after["seg_acc"] <= 1.0
