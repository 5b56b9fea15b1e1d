"""Demo datasets: on-disk format (compressed per-episode arrays + checksummed manifest), collection, loading."""

from capvector.data.dataset import DemoDataset, open_dataset
from capvector.data.format import FORMAT_VERSION, read_manifest, verify_dataset

__all__ = ["FORMAT_VERSION", "DemoDataset", "open_dataset", "read_manifest", "verify_dataset"]
