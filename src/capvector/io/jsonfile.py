"""Reading the JSON objects capvector's inputs hold (configs, manifests, dataset info), with one message for a file
that cannot be read, is not JSON, or holds something other than an object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; otherwise one line naming `what` the file is (e.g. "dataset"), the path and why."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CapvectorError(f"{what} {path}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise CapvectorError(f"{what} {path}: expected a JSON object, found {type(data).__name__}")
    return data
