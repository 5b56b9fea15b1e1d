"""Shared checks for the family miniatures: three runs on disk, extract + merge with a preset, expected sets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

import capvector
import capvector.integrations  # noqa: F401  (registers the family presets)
from capvector.vectors import CapabilityVector

torch.set_num_threads(1)  # shared 2-core machine


def perturb_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Move every parameter by seeded noise: a stand-in for one fine-tuning run."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))


def read_all(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file (safetensors or torch pickle) or of every safetensors file in a directory."""
    if path.is_file() and path.suffix in (".pt", ".bin"):
        return dict(torch.load(path, weights_only=True))
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():  # noqa: SIM118
                out[k] = h.get_tensor(k)
    return out


def check_preset_roundtrip(
    tmp: Path, pre: Path, sft: Path, aux: Path, preset: str, expected: Callable[[str], bool], weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """Extract with `preset`, merge into `pre`; assert exactly the expected tensors move, by exactly λ·τ.

    `expected` is the test's own predicate over key names (independent of the preset's globs).
    Returns the merged tensors.
    """
    vec = tmp / f"vec-{preset.replace(':', '_').replace('+', '_')}"
    out = tmp / f"merged-{vec.name}"
    capvector.extract(sft, aux, vec, preset=preset, progress=False)
    s, a, p = read_all(sft), read_all(aux), read_all(pre)
    want = sorted(k for k in s if k in a and expected(k) and s[k].is_floating_point())
    assert want, f"{preset}: the test's predicate selects nothing"
    assert sorted(CapabilityVector(vec).names()) == want
    capvector.merge(pre, [capvector.VectorWeight(vec, weight)], out, progress=False)
    m = read_all(out)
    assert sorted(m) == sorted(p)
    assert any(not torch.equal(m[k], p[k]) for k in want), f"{preset}: nothing moved"
    for k, base in p.items():
        if k in want:
            ref = (base.float() + weight * (a[k].float() - s[k].float())).to(base.dtype)
            torch.testing.assert_close(m[k], ref, rtol=0, atol=1e-6)
            if not torch.equal(a[k], s[k]):
                assert not torch.equal(m[k], base), k
        else:
            assert torch.equal(m[k], base), f"{preset}: {k} changed but is not selected"
    return m
