"""Camera geometry in the data contract's convention (OpenCV: x right, y down, z forward; metric depth), shared by
the geometric teachers and the simulator's scene labels so both read a depth map the same way."""

from __future__ import annotations

import torch


def backproject_world(depth: torch.Tensor, intrinsics: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """(B,V,H,W) depth, (B,V,3,3) K, (B,V,4,4) pose → (B,V,H,W,3) world points of pixel centres."""
    b, v, h, w = depth.shape
    dev = depth.device
    vs, us = torch.meshgrid(torch.arange(h, device=dev) + 0.5, torch.arange(w, device=dev) + 0.5, indexing="ij")
    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    cx, cy = intrinsics[..., 0, 2], intrinsics[..., 1, 2]
    x = (us - cx[..., None, None]) / fx[..., None, None] * depth
    y = (vs - cy[..., None, None]) / fy[..., None, None] * depth
    cam = torch.stack([x, y, depth], dim=-1)  # (B,V,H,W,3)
    rot, trans = cam_to_world[..., :3, :3], cam_to_world[..., :3, 3]
    return torch.einsum("bvij,bvhwj->bvhwi", rot, cam) + trans[:, :, None, None, :]
