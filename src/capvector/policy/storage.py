"""Policy directories: `config.json` (the config's fields, `policy_type` for types other than the tiny VLA) and
`model.safetensors`, each written atomically; read strictly, whatever the registered type."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from capvector.errors import CapvectorError
from capvector.io.atomic import atomic_write_text
from capvector.io.jsonfile import read_json_object
from capvector.policy.config import PolicyConfig
from capvector.policy.model import WEIGHTS_NAME, TinyPolicy
from capvector.policy.registry import build_policy, config_from_dict

CONFIG_NAME = "config.json"


def save_policy(model: TinyPolicy, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` (each atomically); the layout `from_pretrained` reads."""
    directory = Path(directory)
    model._save_pretrained(directory)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    return directory


def read_policy_config(directory: str | Path) -> PolicyConfig:
    """A policy directory's `config.json`, validated (the shape a run must render and collect for)."""
    cfg_path = Path(directory) / CONFIG_NAME
    if not cfg_path.is_file():
        raise CapvectorError(f"policy directory {directory}: missing {CONFIG_NAME}")
    raw = read_json_object(cfg_path, "policy config")
    cfg_dict = raw.get("config", raw)
    if not isinstance(cfg_dict, dict):
        raise CapvectorError(f"{cfg_path}: expected a JSON object with the policy config")
    return config_from_dict(cfg_dict, source=str(cfg_path))


def load_policy(directory: str | Path, map_location: str = "cpu") -> TinyPolicy:
    """Read a policy directory strictly: every key present, no extra keys, shapes as the config says."""
    directory = Path(directory)
    w_path = directory / WEIGHTS_NAME
    for p in (directory / CONFIG_NAME, w_path):
        if not p.is_file():
            raise CapvectorError(f"policy directory {directory}: missing {p.name}")
    model = build_policy(read_policy_config(directory))
    state = load_file(str(w_path), device=map_location)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CapvectorError(f"{w_path}: keys do not match the config; missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CapvectorError(f"{w_path}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
