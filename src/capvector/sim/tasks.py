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
}

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
