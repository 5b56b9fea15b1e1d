"""Is τ = θ_aux − θ_sft a capability or trajectory noise? Cosines of the per-seed vectors across training seeds.

Reads an `aux_rollouts.py` output directory (aux_seedS/policy and sft_seedS/policy for several seeds S, same
init, data and data order within a seed) and compares, over every weight matrix of the policy:

- cos(τ_s, τ_s') across seeds: what the auxiliary objective changes the same way whatever the seed;
- cos(θ_sft,s − θ_pre, θ_sft,s' − θ_pre): how reproducible plain fine-tuning itself is, for scale;
- ‖mean_s τ_s‖ / mean_s ‖τ_s‖: 1/√S for independent noise, 1 for a shared direction.

Under τ_s = c + n_s with seed-independent noise of equal size, cos(τ_s, τ_s') ≈ ‖c‖² / ‖τ‖², the share of τ's
energy that is shared; averaging S vectors raises it to ‖c‖² / (‖c‖² + (‖τ‖² − ‖c‖²)/S).

    python benchmarks/vector_consistency.py --runs runs/E5 [--init PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from capvector.assets import pretrained_policy_dir


def _flat(weights: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([weights[k].float().flatten() for k in keys])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="aux_rollouts.py output directory")
    p.add_argument("--init", default=None, help="θ_pre directory (default: the shipped weights)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    runs = Path(a.runs)
    seeds = sorted(int(m.group(1)) for d in runs.glob("aux_seed*") if (m := re.fullmatch(r"aux_seed(\d+)", d.name))
                   and (runs / f"sft_seed{m.group(1)}" / "policy").is_dir() and (d / "policy").is_dir())
    if len(seeds) < 2:
        raise SystemExit(f"{runs}: need finished aux and sft runs for at least two seeds, found {seeds}")
    pre = load_file(str(Path(a.init or pretrained_policy_dir()) / "model.safetensors"))
    keys = sorted(k for k, v in pre.items() if v.dim() >= 2)
    theta_pre = _flat(pre, keys)
    aux = {s: _flat(load_file(str(runs / f"aux_seed{s}" / "policy" / "model.safetensors")), keys) for s in seeds}
    sft = {s: _flat(load_file(str(runs / f"sft_seed{s}" / "policy" / "model.safetensors")), keys) for s in seeds}
    tau = {s: aux[s] - sft[s] for s in seeds}
    pairs = list(itertools.combinations(seeds, 2))
    cross_tau = [_cos(tau[x], tau[y]) for x, y in pairs]
    cross_sft = [_cos(sft[x] - theta_pre, sft[y] - theta_pre) for x, y in pairs]
    mean_norm = sum(float(t.norm()) for t in tau.values()) / len(seeds)
    shared = sum(cross_tau) / len(cross_tau)
    out = {
        "runs": str(runs), "seeds": seeds, "matrices": len(keys),
        "tau_norm": {s: float(tau[s].norm()) for s in seeds},
        "sft_update_norm": {s: float((sft[s] - theta_pre).norm()) for s in seeds},
        "cos_aux_sft_update_same_seed": {s: _cos(aux[s] - theta_pre, sft[s] - theta_pre) for s in seeds},
        "cos_tau_across_seeds": {"mean": shared, "min": min(cross_tau), "max": max(cross_tau)},
        "cos_sft_update_across_seeds": {"mean": sum(cross_sft) / len(cross_sft)},
        "mean_tau_norm_ratio": float((sum(tau.values()) / len(seeds)).norm()) / mean_norm,
        "independent_noise_ratio": len(seeds) ** -0.5,
        "shared_energy_of_mean_tau": shared / (shared + (1 - shared) / len(seeds)),
    }
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
