"""A synthetic dataset that follows the data contract, for tests and benchmarks (no simulator, no rendering library).

Each sample is a top-down pin-hole view of a grey table with one coloured block. Depth, intrinsics and
cam_to_world are geometrically consistent with the image (ray-cast analytically), so the geometric
teacher sees real structure. The expert action moves the end effector toward the block ("reach") or
away from it ("retreat"), so the policy must read the image, the proprio and the instruction.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from capvector.data.format import STATE_AHEAD_STEPS, STATE_GOAL, STATE_GRIPPER, STATE_HAND, STATE_OBJECT

TASKS = {
    "reach-v3": ("reach the red block", 1.0),
    "retreat-v3": ("move away from the red block", -1.0),
}
CAM_HEIGHT = 1.0
BLOCK_HEIGHT = 0.1
BLOCK_HALF = 0.08


def camera(image_size: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics and OpenCV cam_to_world of a downward camera; view 1 sits higher and to the side."""
    f = image_size * 0.9
    k = torch.tensor([[f, 0.0, image_size / 2], [0.0, f, image_size / 2], [0.0, 0.0, 1.0]])
    pose = torch.eye(4)
    pose[:3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # camera x→world x, y(down)→−y, z(fwd)→−z
    pose[:3, 3] = torch.tensor([0.1 * view, 0.0, CAM_HEIGHT + 0.3 * view])
    return k, pose


def render(block_xy: torch.Tensor, image_size: int, view: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    """(3,H,W) uint8 image, (H,W) depth, intrinsics, cam_to_world for a block at `block_xy` on the z=0 table."""
    k, pose = camera(image_size, view)
    h = w = image_size
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    dx, dy = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]
    cam_z = pose[2, 3]
    top = cam_z - BLOCK_HEIGHT  # depth along the optical axis to the block's top face
    wx, wy = pose[0, 3] + dx * top, pose[1, 3] - dy * top
    on_block = ((wx - block_xy[0]).abs() < BLOCK_HALF) & ((wy - block_xy[1]).abs() < BLOCK_HALF)
    depth = torch.where(on_block, top, cam_z).float()
    table = torch.tensor([110, 110, 120], dtype=torch.uint8)
    block = torch.tensor([200, 40, 40], dtype=torch.uint8)
    img = torch.where(on_block[None], block[:, None, None], table[:, None, None])
    return img, depth, k, pose


class SyntheticDemoDataset(Dataset):
    """`length` samples, each fully determined by (seed, index); `episode_len` consecutive samples share a scene."""

    def __init__(self, length: int = 512, num_cameras: int = 1, image_size: int = 64, chunk: int = 8,
                 seed: int = 0, episode_len: int = 16) -> None:
        self.length, self.num_cameras, self.image_size = length, num_cameras, image_size
        self.chunk, self.seed, self.episode_len = chunk, seed, episode_len

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        episode, step = divmod(index, self.episode_len)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + episode)
        block = (torch.rand(2, generator=g) - 0.5) * 0.6
        task = list(TASKS)[int(torch.randint(len(TASKS), (1,), generator=g))]
        start = torch.cat([(torch.rand(2, generator=g) - 0.5) * 0.6, torch.tensor([0.2])])
        instruction, sign = TASKS[task]
        # The end effector moves along the expert direction; this step sees the position after `step` moves.
        pos = start.clone()
        actions, hand = [], []
        ahead = [min(step + h, self.episode_len - 1) for h in STATE_AHEAD_STEPS]
        for t in range(max(step + self.chunk, ahead[-1] + 1)):
            hand.append(pos)
            delta = torch.cat([block - pos[:2], torch.tensor([BLOCK_HEIGHT - pos[2]])]) * sign
            a = torch.cat([(delta * 4.0).clamp(-1, 1), torch.tensor([1.0 if sign > 0 else -1.0])])
            if t == step:
                proprio = torch.cat([pos, torch.tensor([0.5])])
            if step <= t < step + self.chunk:
                actions.append(a)
            pos = pos + a[:3] * 0.02
        remaining = self.episode_len - step
        mask = torch.arange(self.chunk) < remaining
        acts = torch.stack(actions)
        last = int(mask.sum()) - 1
        acts[~mask] = acts[last].clone()
        views = [render(block, self.image_size, v) for v in range(self.num_cameras)]
        return {
            "image": torch.stack([x[0] for x in views]),
            "proprio": proprio.float(),
            "instruction": instruction,
            "task": task,
            "actions": acts.float(),
            "action_mask": mask,
            "depth": torch.stack([x[1] for x in views]),
            "intrinsics": torch.stack([x[2] for x in views]),
            "cam_to_world": torch.stack([x[3] for x in views]),
            "episode": torch.tensor(episode, dtype=torch.int64),
            "step": torch.tensor(step, dtype=torch.int64),
            "state": self._state(hand[step], block),
            "state_ahead": torch.stack([self._state(hand[t], block) for t in ahead]),
        }

    @staticmethod
    def _state(hand: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """MetaWorld's 39-d layout: the hand, an open gripper, the block as the object and as the goal."""
        state = torch.zeros(39)
        state[STATE_HAND], state[STATE_GRIPPER] = hand, 0.5
        state[STATE_OBJECT] = state[STATE_GOAL] = torch.cat([block, torch.tensor([BLOCK_HEIGHT])])
        return state
