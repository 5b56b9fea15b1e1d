"""Randomised scenes with dense 3D labels: the training data of the frozen foundation teacher.

The teacher must know more than any demo set, so its data covers every MetaWorld task with a scripted expert
(most outside every split), a random camera pose, lighting, colours and distractors per episode, and arm/object
states along noisy expert trajectories. Per frame: the RGB image the policy would see and, at the same
resolution, metric depth, world xyz per pixel, the offset of each pixel's 3D point from the gripper, and a
3-class segmentation (0 = table/background/distractor, 1 = robot, 2 = task object); plus the hand, object and goal
positions of the privileged state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mujoco
import numpy as np

from capvector.sim.env import SimConfig, SimEnv
from capvector.sim.evaluate import episode_seed
from capvector.sim.experts import ScriptedExpert
from capvector.sim.perturb import Perturbation, apply_to_model, distractor_geoms

SEG_CLASSES = ("background", "robot", "object")


@dataclass(frozen=True)
class SceneFrame:
    image: np.ndarray  # (3, H, W) uint8
    depth: np.ndarray  # (H, W) float32, metres
    world: np.ndarray  # (3, H, W) float32, world xyz of each pixel
    seg: np.ndarray  # (H, W) int64 in SEG_CLASSES
    state: np.ndarray  # (9,) hand xyz, object xyz, goal xyz
    cam_to_world: np.ndarray  # (4, 4)
    intrinsics: np.ndarray  # (3, 3)


def _segment_lookup(model: mujoco.MjModel) -> np.ndarray:
    """geom id → class: bodies under the robot's root are 'robot'; bodies that can move (a joint on the way to the
    world) are 'object'; the static rest (table, walls, frames) is background."""
    hand = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "hand")
    robot_root = int(model.body_rootid[hand]) if hand >= 0 else -1
    movable = np.zeros(model.nbody, dtype=bool)
    for b in range(1, model.nbody):  # parents come before children in MuJoCo's body order
        movable[b] = model.body_dofnum[b] > 0 or movable[model.body_parentid[b]]
    out = np.zeros(model.ngeom, dtype=np.int64)
    for g in range(model.ngeom):
        body = int(model.geom_bodyid[g])
        if body and int(model.body_rootid[body]) == robot_root:
            out[g] = 1
        elif movable[body]:
            out[g] = 2
    return out


def random_scene(env: SimEnv, rng: np.random.Generator) -> None:
    """Apply a random camera pose, lighting, colours and distractors on top of the env's reset state."""
    for name, p in (("camera", 0.9), ("lighting", 0.7), ("colors", 0.6)):
        if rng.random() < p:
            apply_to_model(env.model, Perturbation(name, float(rng.uniform(0.2, 1.0))), rng, env.rig.camera_ids)
    env.rig.extra_geoms = (distractor_geoms(Perturbation("distractors", float(rng.uniform(0.25, 1.0))), rng)
                           if rng.random() < 0.5 else [])
    mujoco.mj_forward(env.model, env.data)


def render_frame(env: SimEnv, lookup: np.ndarray) -> SceneFrame:
    """Image, depth, per-pixel world points and segmentation of the first camera, from one scene state."""
    import torch

    from capvector.geometry import backproject_world

    image, depth = env.rig.rgb_depth(env.data)
    # Distractor pixels come out as what lies behind them: almost always table, class 0, where they belong too.
    ids = env.rig.segmentation(env.data)[0]
    is_geom = (ids[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)) & (ids[..., 0] >= 0)
    seg = np.where(is_geom, lookup[np.clip(ids[..., 0], 0, len(lookup) - 1)], 0)
    intr, pose = env.rig.intrinsics()[0], env.rig.cam_to_world(env.data)[0]
    world = backproject_world(torch.from_numpy(depth[:1][None]), torch.from_numpy(intr[None, None]),
                              torch.from_numpy(pose[None, None]))[0, 0].permute(2, 0, 1).numpy()
    raw = env.raw_obs
    state = np.concatenate([raw[0:3], raw[4:7], raw[36:39]]).astype(np.float32)
    return SceneFrame(image[0], depth[0], world.astype(np.float32), seg.astype(np.int64), state, pose, intr)


def scene_frames(tasks: list[str], episodes_per_task: int, seed: int, size: int = 64, every: int = 6,
                 noise: float = 0.3) -> Iterator[tuple[str, SceneFrame]]:
    """Frames along noisy expert trajectories in randomised scenes, every `every` steps (a random phase)."""
    rng = np.random.default_rng(seed)
    for task in tasks:
        env = SimEnv(task, SimConfig(image_size=size, max_steps=150))
        lookup = _segment_lookup(env.model)
        expert = ScriptedExpert(noise=0.0, seed=seed)
        expert.bind(env)
        try:
            for ep in range(episodes_per_task):
                env.reset(episode_seed(seed, task, ep))
                random_scene(env, rng)
                phase = int(rng.integers(every))
                done = False
                while not done:
                    if env.steps % every == phase:
                        yield task, render_frame(env, lookup)
                    action = np.clip(expert.clean_action() + rng.normal(scale=noise, size=4), -1, 1)
                    _, done = env.step(action.astype(np.float32))
        finally:
            env.close()
