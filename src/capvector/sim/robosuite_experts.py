"""Scripted experts for the robosuite tasks: stateless rules on the privileged 39-d state (`RobosuiteEnv.raw_obs`,
task frame), so they need no simulator and recover from their own noise the way MetaWorld's policies do.

A grasp is read from the gripper opening and the previous step's (state 21): Panda fingers closed on a 4–4.4 cm
cube stop at an opening of about 0.65–0.75, closed on nothing at about 0.03.
"""

from __future__ import annotations

import numpy as np

from capvector.errors import CapvectorError
from capvector.sim.tasks import ROBOSUITE_TASKS

GAIN = 10.0  # action per metre of error: full speed from 10 cm away
NEAR = 0.015  # m: the grip site is on the cube
HOLDING = (0.2, 0.85)  # settled gripper openings between these, with the hand on the cube, mean it holds the cube
SETTLED = 0.003  # the opening changed less than this in the last step: the fingers stopped
CLEARANCE = 0.08  # m above an object to approach it from
ALIGNED = 0.012  # m: a carried cube this close to above the goal is lowered onto it
PLACED = 0.02  # m: a cube this little above its goal is let go


def _move(hand: np.ndarray, target: np.ndarray, grip: float) -> np.ndarray:
    return np.append(np.clip(GAIN * (target - hand), -1.0, 1.0), grip).astype(np.float32)


class PickPlaceExpert:
    """Grasp object 1 from above, carry it to the goal (state 36:39); with `release`, set it down there and let go
    (stacking), else hold it (lifting)."""

    def __init__(self, release: bool) -> None:
        self.release = release

    def get_action(self, state: np.ndarray) -> np.ndarray:
        hand, opening, obj, goal = state[0:3], float(state[3]), state[4:7], state[36:39]
        settled = abs(opening - float(state[21])) < SETTLED
        offset = hand - obj
        on_cube = np.linalg.norm(offset[:2]) < NEAR and abs(offset[2]) < NEAR
        if self.release and np.linalg.norm(obj[:2] - goal[:2]) < ALIGNED and obj[2] - goal[2] < PLACED:
            # placed (the fingertips reach below the cube, so it is let go just above): open in place, then back off
            return _move(hand, hand if opening < 0.9 else obj + np.array([0.0, 0.0, CLEARANCE]), -1.0)
        if on_cube and opening < HOLDING[0]:
            return _move(hand, obj + np.array([0.0, 0.0, CLEARANCE]), -1.0)  # closed on nothing: open, retry
        if on_cube and opening < HOLDING[1] and settled:
            return _move(hand, self._carry_target(obj, goal) + offset, 1.0)
        if on_cube:
            return _move(hand, obj, 1.0)  # close in place
        if np.linalg.norm(offset[:2]) > NEAR:
            above = obj + np.array([0.0, 0.0, CLEARANCE])
            if offset[2] < CLEARANCE / 2:  # low beside the cube: rise before moving across
                above[:2] = hand[:2] + np.clip(above[:2] - hand[:2], -0.01, 0.01)
            return _move(hand, above, -1.0)
        return _move(hand, obj, -1.0)  # above the cube, open: descend

    def _carry_target(self, obj: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Straight to the goal when lifting; when stacking, up, across at the goal's height plus clearance, down."""
        if not self.release:
            return goal
        if np.linalg.norm(obj[:2] - goal[:2]) > ALIGNED:
            high = goal + np.array([0.0, 0.0, CLEARANCE / 2])
            if obj[2] < goal[2] + CLEARANCE / 4:
                return np.array([obj[0], obj[1], high[2]])
            return high
        return goal - np.array([0.0, 0.0, 0.02])  # aim below: the arm sags under the cube's weight


def expert_for(task: str) -> PickPlaceExpert:
    """Lift holds the cube at the goal; Stack sets cube A down on cube B and lets go."""
    if task not in ROBOSUITE_TASKS:
        raise CapvectorError(f"task {task!r}: no scripted robosuite expert; have {sorted(ROBOSUITE_TASKS)}")
    return PickPlaceExpert(release=ROBOSUITE_TASKS[task][0] == "Stack")
