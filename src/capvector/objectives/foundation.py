"""A frozen scene foundation network: the embedded benchmark's analogue of Spatial Forcing's VGGT teacher.

SceneNet is a small convolutional encoder–decoder trained once (see `capvector.pipeline.teacher`) on randomised
renders of every MetaWorld task to predict dense 3D structure: metric depth, world xyz, each point's offset from
the gripper, a robot/object/background segmentation, and the hand, object and goal positions. Its encoder's
stride-8 feature map (one 128-d vector per 8×8 patch, the policy's token grid at 64 px) is what the policy's
visual tokens are aligned to. It runs on every training batch, so aux-SFT pays a real teacher cost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_save_safetensors, atomic_write_text
from capvector.io.jsonfile import read_json_object
from capvector.objectives.features import feature_key, write_teacher_features

CONFIG_NAME = "teacher_config.json"
WEIGHTS_NAME = "teacher.safetensors"
DENSE_CHANNELS = 7  # depth, world xyz, offset from the gripper xyz
SEG_CLASSES = 3


@dataclass(frozen=True)
class SceneNetConfig:
    image_size: int = 64
    widths: tuple[int, int, int] = (32, 64, 128)
    feature_dim: int = 128
    # normalisation of the regression targets, measured on the training data (set by the training recipe)
    dense_mean: tuple[float, ...] = (0.0,) * DENSE_CHANNELS
    dense_std: tuple[float, ...] = (1.0,) * DENSE_CHANNELS
    state_mean: tuple[float, ...] = (0.0,) * 9
    state_std: tuple[float, ...] = (1.0,) * 9


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.GELU())


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(ch, ch), nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.GroupNorm(8, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.body(x))


class SceneNet(nn.Module):
    """64 px RGB → stride-8 features (B, feature_dim, 8, 8); dense heads at 32×32 and a global state head."""

    def __init__(self, cfg: SceneNetConfig = SceneNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        w1, w2, w3 = cfg.widths
        self.stem = nn.Sequential(_conv(3, w1), _conv(w1, w1))  # 64
        self.down1 = nn.Sequential(_conv(w1, w2, 2), _Residual(w2))  # 32
        self.down2 = nn.Sequential(_conv(w2, w3, 2), _Residual(w3))  # 16
        self.down3 = nn.Sequential(_conv(w3, cfg.feature_dim, 2), _Residual(cfg.feature_dim),
                                   _Residual(cfg.feature_dim))  # 8: the alignment features
        self.up2 = _conv(cfg.feature_dim + w3, w3)  # 16
        self.up1 = _conv(w3 + w2, w2)  # 32
        self.dense = nn.Conv2d(w2, DENSE_CHANNELS + SEG_CLASSES, 1)
        self.state = nn.Sequential(nn.Linear(cfg.feature_dim, 128), nn.GELU(), nn.Linear(128, 9))

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        return (x / 255.0 if images.dtype == torch.uint8 else x) * 2.0 - 1.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.down3(self.down2(self.down1(self.stem(self._prepare(images)))))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        s1 = self.down1(self.stem(self._prepare(images)))
        s2 = self.down2(s1)
        f = self.down3(s2)
        u2 = self.up2(torch.cat([F.interpolate(f, scale_factor=2.0, mode="nearest"), s2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="nearest"), s1], 1))
        out = self.dense(u1)
        return {"features": f, "dense": out[:, :DENSE_CHANNELS], "seg": out[:, DENSE_CHANNELS:],
                "state": self.state(f.mean(dim=(2, 3)))}

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors({k: v.detach().float().contiguous() for k, v in self.state_dict().items()},
                                directory / WEIGHTS_NAME)
        atomic_write_text(directory / CONFIG_NAME, json.dumps(asdict(self.cfg), indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SceneNet:
        directory = Path(directory)
        cfg_file, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not (cfg_file.is_file() and weights.is_file()):
            raise CapvectorError(f"scene teacher {directory}: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
        raw = read_json_object(cfg_file, "scene teacher config")
        try:
            cfg = SceneNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except TypeError as e:
            raise CapvectorError(f"scene teacher {cfg_file}: {e}") from None
        net = cls(cfg)
        missing, unexpected = net.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise CapvectorError(f"scene teacher {weights}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
        return net.eval().requires_grad_(False)


class FoundationTeacher:
    """Alignment targets = SceneNet's per-patch features of the policy's own images (every batch, frozen)."""

    def __init__(self, net: SceneNet) -> None:
        self.net = net.eval().requires_grad_(False)
        self.target_dim = net.cfg.feature_dim

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any], grid: int) -> torch.Tensor:
        if "image" not in batch:
            raise CapvectorError(f"foundation teacher: batch has no 'image'; found keys {sorted(batch)}")
        images = torch.as_tensor(batch["image"])
        if images.dim() != 5:
            raise CapvectorError(f"foundation teacher: batch['image'] should be (B, V, 3, H, W), found "
                                 f"{tuple(images.shape)}")
        b, v = images.shape[:2]
        feats = self.net.features(images.flatten(0, 1))  # (B·V, D, h, w)
        if feats.shape[-1] != grid:
            feats = F.interpolate(feats, size=(grid, grid), mode="bilinear", align_corners=False)
        return feats.flatten(2).transpose(1, 2).reshape(b, v * grid * grid, -1)


def default_teacher_dir() -> Path:
    from capvector.assets import scene_teacher_dir

    return scene_teacher_dir()


def precompute_features(net: SceneNet, dataset: Any, output: str | Path, batch_size: int = 256) -> Path:
    """The teacher's per-patch features of every frame of a demo dataset, for `PrecomputedTeacher`.

    The teacher is frozen and demo images are not augmented, so its targets can be computed once per frame
    instead of once per batch: the same targets (up to float rounding of batched convolutions) at a fraction of the
    training cost. That is how a user with a real foundation teacher (VGGT) trains; the per-batch teacher is what
    the demo runs, so that aux-SFT's step-time cost shows."""
    feats: dict[str, torch.Tensor] = {}
    keys: list[str] = []
    images: list[torch.Tensor] = []

    def flush() -> None:
        with torch.no_grad():
            out = net.features(torch.stack(images).flatten(0, 1))  # (n·V, D, h, w)
        views = images[0].shape[0]
        out = out.reshape(len(images), views, *out.shape[1:]).permute(0, 1, 3, 4, 2)  # (n, V, h, w, D)
        feats.update({k: v.contiguous() for k, v in zip(keys, out, strict=True)})
        keys.clear()
        images.clear()

    for i in range(len(dataset)):
        sample = dataset[i]
        keys.append(feature_key(int(sample["episode"]), int(sample["step"])))
        images.append(torch.as_tensor(sample["image"]))
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    return write_teacher_features(output, feats)
