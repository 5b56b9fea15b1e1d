"""The policy interface the evaluator drives: the tiny VLA and the scripted experts both implement it."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """`act` maps one unbatched observation to an action chunk (K, 4) in [-1, 1].

    The observation dict holds "image" uint8 (V, 3, H, W), "proprio" float32 (4,), "instruction" str
    and "task" str. The evaluator runs the chunk (or its first n actions) open-loop, then asks again.
    `reset` is called at the start of every episode (clear any history).
    """

    def act(self, observation: dict[str, Any]) -> np.ndarray: ...

    def reset(self) -> None: ...
