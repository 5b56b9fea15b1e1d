"""LeRobotDataset v3.0 export and import for demo datasets (needs the [lerobot-data] extra: pyarrow, av)."""

from capvector.data.lerobot.export import export_lerobot
from capvector.data.lerobot.reader import LeRobotDemoDataset

__all__ = ["LeRobotDemoDataset", "export_lerobot"]
