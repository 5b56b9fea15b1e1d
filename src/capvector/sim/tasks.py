"""Task instructions and the named, versioned task splits (pretrain / D_cap / D_down / OOD)."""

from __future__ import annotations

from capvector.errors import CapvectorError

INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "move the gripper to the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "door-close-v3": "close the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-v3": "press the button from the front",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "plate-slide-v3": "slide the plate into the goal",
    "handle-press-v3": "press the handle down",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "coffee-button-v3": "press the button on the coffee machine",
    "reach-wall-v3": "reach the goal behind the wall",
    "push-wall-v3": "push the puck around the wall to the goal",
    "handle-press-side-v3": "press the handle down from the side",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "button-press-wall-v3": "press the button behind the wall",
    "lever-pull-v3": "pull the lever up",
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "coffee-pull-v3": "pull the mug from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-lock-v3": "lock the door by turning the lock",
    "door-unlock-v3": "unlock the door by turning the lock",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "peg-insert-side-v3": "insert the peg sideways into the hole",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "pick-out-of-hole-v3": "pick the puck out of the hole",
    "pick-place-wall-v3": "pick the puck over the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "push-back-v3": "pull the puck back to the goal",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    # robosuite tasks (capvector.sim.robosuite_env): robots and tasks θ_pre never saw
    "rs-lift-panda": "pick up the cube and lift it",
    "rs-stack-panda": "stack the red cube on the green cube",
    "rs-lift-ur5e": "pick up the cube and lift it",
    "rs-lift-iiwa": "pick up the cube and lift it",
}

# robosuite tasks: name → (robosuite environment, robot, its options). The UR5e and IIWA arms carry the Panda
# gripper, so one gripper-opening measure and one expert serve every arm.
ROBOSUITE_TASKS: dict[str, tuple[str, str, dict]] = {
    "rs-lift-panda": ("Lift", "Panda", {}),
    "rs-stack-panda": ("Stack", "Panda", {}),
    "rs-lift-ur5e": ("Lift", "UR5e", {"gripper_types": "PandaGripper"}),
    "rs-lift-iiwa": ("Lift", "IIWA", {"gripper_types": "PandaGripper"}),
}

# Scripted-expert success (%) with the demos' action noise 0.1, 20 episodes per task at the demo's 150-step horizon
# (benchmarks/expert_table.py, 2026-11-29; docs/simulator.md has the table with and without noise).
EXPERT_SUCCESS: dict[str, float] = {
    "assembly-v3": 80, "basketball-v3": 95, "bin-picking-v3": 85, "box-close-v3": 75, "button-press-topdown-v3": 100,
    "button-press-topdown-wall-v3": 100, "button-press-v3": 100, "button-press-wall-v3": 90, "coffee-button-v3": 100,
    "coffee-pull-v3": 100, "coffee-push-v3": 100, "dial-turn-v3": 100, "disassemble-v3": 55, "door-close-v3": 100,
    "door-lock-v3": 100, "door-open-v3": 90, "door-unlock-v3": 100, "drawer-close-v3": 100, "drawer-open-v3": 100,
    "faucet-close-v3": 100, "faucet-open-v3": 100, "hammer-v3": 100, "hand-insert-v3": 95,
    "handle-press-side-v3": 100, "handle-press-v3": 100, "handle-pull-side-v3": 70, "handle-pull-v3": 100,
    "lever-pull-v3": 100, "peg-insert-side-v3": 80, "peg-unplug-side-v3": 75, "pick-out-of-hole-v3": 55,
    "pick-place-v3": 100, "pick-place-wall-v3": 100, "plate-slide-back-side-v3": 100, "plate-slide-back-v3": 100,
    "plate-slide-side-v3": 100, "plate-slide-v3": 100, "push-back-v3": 55, "push-v3": 100, "push-wall-v3": 100,
    "reach-v3": 100, "reach-wall-v3": 100, "shelf-place-v3": 95, "soccer-v3": 80, "stick-pull-v3": 75,
    "stick-push-v3": 100, "sweep-into-v3": 90, "sweep-v3": 100, "window-close-v3": 100, "window-open-v3": 100,
    # robosuite's Panda (capvector.sim.robosuite_experts; same protocol and seed, 2026-11-30)
    "rs-lift-panda": 100, "rs-stack-panda": 95, "rs-lift-ur5e": 100, "rs-lift-iiwa": 100,
}
DEMO_READY_PC = 90.0  # a task supplies demonstrations only if its expert succeeds this often

SPLITS_VERSION = "v1"
# Pretraining covers the basic skills (reach, push, grasp, open, press); D_cap is a small set whose
# demos produce the capability vector; D_down holds close relatives of pretraining tasks (the opposite
# motion or an added obstacle) so they are learnable from few demos; OOD tasks share no task with the
# others and are meant to be evaluated under the perturbation suite too.
SPLITS: dict[str, tuple[str, ...]] = {
    "pretrain": ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
                 "button-press-topdown-v3", "window-open-v3", "plate-slide-v3", "handle-press-v3",
                 "faucet-open-v3"),
    "cap": ("drawer-close-v3", "button-press-v3", "window-close-v3"),
    "down": ("door-close-v3", "faucet-close-v3", "reach-wall-v3", "coffee-button-v3"),
    "ood": ("push-wall-v3", "handle-press-side-v3", "plate-slide-side-v3", "button-press-wall-v3"),
}


def demo_ready(tasks: list[str] | tuple[str, ...], role: str) -> None:
    """Refuse tasks whose scripted expert is too unreliable to supply demonstrations (collection keeps only
    successful episodes, so a weak expert also biases the demos toward its easy layouts)."""
    weak = [f"{t} ({EXPERT_SUCCESS[t]:.0f}%)" for t in tasks if EXPERT_SUCCESS.get(t, 0.0) < DEMO_READY_PC]
    if weak:
        raise CapvectorError(f"{role}: the scripted expert succeeds in under {DEMO_READY_PC:.0f}% of noisy episodes "
                             f"for {', '.join(weak)}; choose tasks from docs/simulator.md's expert table")


def split_tasks(spec: str) -> list[str]:
    """A split name ("pretrain", "cap", "down", "ood", optionally "NAME@v1") or comma-separated task names."""
    name, _, version = spec.partition("@")
    if version and version != SPLITS_VERSION:
        raise CapvectorError(f"split {spec!r}: version {version!r} unknown (have {SPLITS_VERSION!r})")
    if name in SPLITS:
        return list(SPLITS[name])
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in INSTRUCTIONS]
    if not tasks or unknown:
        raise CapvectorError(f"split {spec!r}: unknown task(s) {unknown or [spec]}; "
                             f"use one of {sorted(SPLITS)} or tasks from {sorted(INSTRUCTIONS)}")
    return tasks
