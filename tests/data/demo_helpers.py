"""Tiny demo datasets in capvector's own format, written without the simulator (random content)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capvector.data.format import FORMAT_VERSION, write_episode, write_manifest

CAMERAS = ["corner3", "topview"]
EPISODES = [("reach-v3", "reach the goal", 5), ("push-v3", "push the puck", 9), ("reach-v3", "reach the goal", 3)]


def random_episode(rng: np.random.Generator, length: int, views: int = 2, h: int = 10, w: int = 14
                   ) -> dict[str, np.ndarray]:
    """Noise images: the hardest content for a video codec, so a lossless round trip is really tested."""
    state = rng.normal(size=(length, 39)).astype(np.float32)
    return {"image": rng.integers(0, 256, size=(length, views, 3, h, w), dtype=np.uint8),
            "depth": rng.uniform(0.1, 3.0, size=(length, views, h, w)).astype(np.float32),
            "proprio": state[:, :4].copy(), "actions": rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
            "state": state, "intrinsics": rng.normal(size=(views, 3, 3)).astype(np.float32),
            "cam_to_world": rng.normal(size=(length, views, 4, 4)).astype(np.float32)}


def write_demo_dataset(root: Path, episodes=EPISODES, cameras=CAMERAS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    entries = []
    for i, (task, instruction, length) in enumerate(episodes):
        entry = write_episode(root, i, random_episode(rng, length, views=len(cameras)))
        entries.append(entry | {"task": task, "instruction": instruction, "seed": i, "success": True})
    write_manifest(root, {"format_version": FORMAT_VERSION, "complete": True, "episodes": entries, "attempts": {},
                          "settings": {"sim": {"cameras": list(cameras)}}})
    return root
