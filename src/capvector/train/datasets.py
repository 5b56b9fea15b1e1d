"""The datasets a training run can name: the built-in synthetic contract data or a recorded demo dataset."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from capvector.errors import CapvectorError
from capvector.policy import PolicyConfig
from capvector.train.synthetic import SyntheticDemoDataset


def training_dataset(spec: str, policy: PolicyConfig, seed: int = 0) -> Dataset:
    """"synthetic" / "synthetic:N" → the built-in contract dataset; a path → `capvector.data.open_dataset(path)`."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        n = int(spec.split(":", 1)[1]) if ":" in spec else 2048
        return SyntheticDemoDataset(length=n, num_cameras=policy.num_cameras, image_size=policy.image_size,
                                    chunk=policy.chunk, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise CapvectorError(f"dataset {spec!r}: no such path (or use 'synthetic[:N]')")
    from capvector.data import open_dataset as open_demo_dataset  # either format: capvector's or LeRobot v3.0

    return open_demo_dataset(path, chunk=policy.chunk)
