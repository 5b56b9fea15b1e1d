"""One robosuite task (a second robot: the Panda, or the UR5e / IIWA arm with the Panda gripper) behind the same env
interface as the MetaWorld `SimEnv`.

The environment is robosuite's own (robosuite 1.4, shipped with the [libero] extra) with the OSC_POSITION
controller at 20 Hz, so an action is MetaWorld's 4-d one: an end-effector xyz delta in [-1, 1] (robosuite's
default scale: 1 = a 5 cm set-point step) and the gripper, +1 closing and −1 opening as in MetaWorld (robosuite acts
on its sign only and ramps the fingers). Rendering is our `CameraRig` on robosuite's MjModel/MjData (robosuite's
own off-screen renderer stays off), so images are upright like MetaWorld's and perturbations edit that model.

Everything the policy, the experts and the teachers see is in the *task frame*, MetaWorld's convention: origin at
the robot base at table-top height, +x to the robot's right, +y away from the robot, +z up (robosuite's world has
+x away from the robot and +y to its left). Actions are given in that frame and rotated into robosuite's.
"""

from __future__ import annotations

import contextlib
import io
import logging

import mujoco
import numpy as np

from capvector.errors import CapvectorError
from capvector.extras import missing_extra
from capvector.sim.base import SimConfig, TaskEnv, checked_action
from capvector.sim.perturb import Perturbation, Scene, Table
from capvector.sim.tasks import INSTRUCTIONS, ROBOSUITE_TASKS

# MetaWorld's camera roles (what SimConfig and the pipeline name) → the robosuite camera in that role.
CAMERAS = {"corner3": "agentview", "topview": "birdview"}
# Rotation taking robosuite world axes to task-frame axes: robosuite +x (away) → +y, robosuite +y (left) → −x.
TO_TASK = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
CONTROL_HZ = 20
PANDA_FINGER_SPAN = 0.08  # metres between the Panda's fingers, fully open


def _quat_of(matrix: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(matrix, dtype=np.float64).ravel())
    return q


def _make_robosuite(task: str):
    """robosuite's environment for a task name such as 'rs-lift-panda' (its INFO/WARNING chatter silenced)."""
    if task not in ROBOSUITE_TASKS:
        raise CapvectorError(f"task {task!r} is not a robosuite task; have {sorted(ROBOSUITE_TASKS)}")
    env_name, robot, options = ROBOSUITE_TASKS[task]
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import robosuite
            from robosuite.controllers import load_controller_config
    except ImportError as e:
        raise (missing_extra(e) or e) from None
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    return robosuite.make(env_name, robots=robot, controller_configs=load_controller_config(
        default_controller="OSC_POSITION"), has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
        use_object_obs=False, hard_reset=False, ignore_done=True, horizon=10**9, reward_shaping=True,
        control_freq=CONTROL_HZ, **options)


class RobosuiteEnv(TaskEnv):
    """reset(seed, perturbation) → raw_obs; step(action) → (success, done), like `SimEnv`.

    `raw_obs` is 39-d in MetaWorld's layout, task frame: hand xyz (0:3), gripper opening in [0, 1] (3), the first
    object's position and quaternion (4:11; the cube, or cube A), the second's (11:18; cube B; zeros for Lift), the
    previous step's 0:18 (18:36), the goal (36:39).
    """

    def __init__(self, task: str, config: SimConfig | None = None) -> None:
        self.task, self.config = task, config or SimConfig()
        self.rs = _make_robosuite(task)
        self.instruction = INSTRUCTIONS[task]
        self.kind = ROBOSUITE_TASKS[task][0]  # the robosuite environment: "Lift" or "Stack"
        self.model, self.data = self.rs.sim.model._model, self.rs.sim.data._data
        table_top = float(self.rs.table_offset[2])
        base = np.array(self.data.body("robot0_base").xpos)
        self.origin = np.array([base[0], base[1], table_top])
        frame = np.eye(4)
        frame[:3, :3], frame[:3, 3] = TO_TASK, -TO_TASK @ self.origin
        self._init_rig(tuple(CAMERAS.get(c, c) for c in self.config.cameras), frame)
        x, y, _ = self.rs.table_offset
        half = np.asarray(self.rs.table_full_size[:2]) / 2 - 0.05
        self.table = Table((x - half[0], x + half[0]), (y - half[1], y + half[1]), table_top)
        robot = self.rs.robots[0]
        self._eef_site = robot.eef_site_id
        self._fingers = np.asarray(robot._ref_gripper_joint_pos_indexes)
        self._prev = np.zeros(18)
        self._start = np.zeros(7)

    # ---- frames and state ---------------------------------------------------------------------------
    def to_task(self, world: np.ndarray) -> np.ndarray:
        return TO_TASK @ (np.asarray(world, dtype=np.float64) - self.origin)

    def _pose(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        """A body's task-frame position and orientation quaternion (w, x, y, z)."""
        rot = TO_TASK @ self.data.xmat[body].reshape(3, 3)
        return self.to_task(self.data.xpos[body]), _quat_of(rot)

    def _objects(self) -> tuple[np.ndarray, np.ndarray]:
        """Task-frame (pos, quat) of the first and second objects, each 7 numbers (zeros where there is none)."""
        if self.kind == "Lift":
            return np.concatenate(self._pose(self.rs.cube_body_id)), np.zeros(7)
        return np.concatenate(self._pose(self.rs.cubeA_body_id)), np.concatenate(self._pose(self.rs.cubeB_body_id))

    def _goal(self, obj1: np.ndarray, obj2: np.ndarray) -> np.ndarray:
        """Where the task's object must get to: 10 cm above the cube's start (robosuite's Lift succeeds at 4 cm;
        fixed at reset), or resting on cube B (centres 0.02 + 0.025 m apart; follows cube B)."""
        if self.kind == "Lift":
            return self._start[:3] + np.array([0.0, 0.0, 0.1])
        return obj2[:3] + np.array([0.0, 0.0, 0.045])

    def gripper_opening(self) -> float:
        q = self.data.qpos[self._fingers]
        return float(np.clip((q[0] - q[1]) / PANDA_FINGER_SPAN, 0.0, 1.0))

    def _state(self) -> np.ndarray:
        hand = self.to_task(self.data.site_xpos[self._eef_site])
        obj1, obj2 = self._objects()
        now = np.concatenate([hand, [self.gripper_opening()], obj1, obj2])
        state = np.concatenate([now, self._prev, self._goal(obj1, obj2)])
        self._prev = now
        return state

    # ---- episode ------------------------------------------------------------------------------------
    def reset(self, seed: int, perturbation: Perturbation | Scene | None = None) -> np.ndarray:
        """New episode: robosuite's placement and joint noise drawn from `seed` (robosuite draws from NumPy's global
        generator: it is seeded for the reset and restored after); the scene as in `SimEnv.reset`."""
        streams = self._apply_scene(seed, perturbation)
        saved = np.random.get_state()
        try:
            np.random.seed(int(seed) % 2**32)
            self.rs.reset()
        finally:
            np.random.set_state(saved)
        for part, rng in streams:
            if part.name == "init_noise":
                for _ in range(int(round(15 * part.severity))):
                    self._act(np.append(rng.uniform(-1, 1, 3), -1.0))
        mujoco.mj_forward(self.model, self.data)
        self._start = self._objects()[0]
        self._state()  # at reset the previous frame is the current one, as in MetaWorld
        self.raw_obs = self._state()
        self.steps = 0
        self.reward = 0.0
        return self.raw_obs

    def _act(self, action: np.ndarray) -> float:
        rs_action = np.append(TO_TASK.T @ action[:3], action[3])
        _, reward, _, _ = self.rs.step(rs_action)
        return float(reward)

    def step(self, action: np.ndarray) -> tuple[bool, bool]:
        """Apply one action (task frame); returns (success, done). done on success or at max_steps."""
        self.reward = self._act(checked_action(action))
        self.steps += 1
        self.raw_obs = self._state()
        success = bool(self.rs._check_success())
        return success, success or self.steps >= self.config.max_steps

    def proprio(self) -> np.ndarray:
        """Hand xyz in the task frame and the gripper opening, as MetaWorld's first four observations."""
        return self.raw_obs[:4].astype(np.float32)

    def _close_sim(self) -> None:
        self.rs.close()
