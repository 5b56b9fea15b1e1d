"""The one way a command turns `--policy SPEC` into something to roll out.

Layers, each used by the next: `capvector.policy.load_policy` reads one policy directory strictly;
`load_trained` opens any trained layout (a policy directory, a run or snapshot directory, a base policy
with a PEFT adapter); `open_policy` adds what a user may name on the command line instead of a directory.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.train.export import load_trained

EXPERT = "expert"


def open_policy(spec: str, args: Sequence[str] = (), experts: bool = False) -> Any:
    """A trained policy or run directory; `module:callable` (called with `args`) returning an object with `act()`
    and `reset()`; or, where `experts` is allowed (the embedded MetaWorld benchmark), "expert" for the scripted
    experts."""
    if experts and spec == EXPERT:
        from capvector.sim.experts import ScriptedExpert

        return ScriptedExpert()
    path = Path(spec)
    if path.exists():
        return load_trained(path)
    if ":" not in spec:
        also = f", not {EXPERT!r}," if experts else ""
        raise CapvectorError(f"--policy {spec!r}: no such directory{also} and not of the form module:callable")
    module_name, attr = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise CapvectorError(f"--policy {spec!r}: cannot load {attr!r} from module {module_name!r} ({e})") from e
    policy = factory(*args)
    if not (callable(getattr(policy, "act", None)) and callable(getattr(policy, "reset", None))):
        raise CapvectorError(f"--policy {spec!r}: {attr}() returned {type(policy).__name__}, which has no "
                             "act(observation) and reset() methods")
    return policy
