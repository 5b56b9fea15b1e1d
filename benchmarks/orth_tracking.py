"""How closely the factored regulariser tracks the exact one over a short training run (tiny Llama, CPU).

SFT (random-token LM loss, AdamW) from θ_meta with the exact regulariser in the loss; every step the factored
value is also computed at several ranks k. Two vectors: "flat" (iid noise, a flat singular spectrum: worst case
for truncation) and "lowrank" (a rank-4 direction plus 10% iid noise, closer to LoRA-derived vectors).
Prints Pearson correlation and relative error |F_k − E| / E over steps ≥ 1.

    python benchmarks/orth_tracking.py [--steps 100]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import capvector
from capvector.orth import OrthogonalRegularizer

INCLUDE = ["*layers.*proj.weight"]


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32))


def make_vector(root: Path, kind: str) -> Path:
    gen = torch.Generator().manual_seed(7)
    for role in ("sft", "aux"):
        m = _model()
        if role == "aux":
            with torch.no_grad():
                for p in m.parameters():
                    if p.dim() == 2 and kind == "lowrank":
                        low = torch.randn(p.shape[0], 4, generator=gen) @ torch.randn(4, p.shape[1], generator=gen)
                        p.add_(0.01 * (low / 2 + 0.1 * torch.randn(p.shape, generator=gen)))
                    else:
                        p.add_(0.01 * torch.randn(p.shape, generator=gen))
        m.save_pretrained(root / kind / role)
    return _extract(root / kind)


def _extract(d: Path) -> Path:
    capvector.extract(d / "sft", d / "aux", d / "vec", include=INCLUDE, progress=False)
    return d / "vec"


def track(vec: Path, steps: int, ranks: list[int]) -> dict[int, tuple[float, float, float]]:
    model = _model()
    exact = OrthogonalRegularizer.from_vector(model, vec, mode="exact", include=INCLUDE)
    facs = {k: OrthogonalRegularizer.from_vector(model, vec, mode="factored", rank=k, include=INCLUDE) for k in ranks}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    e_vals, f_vals = [], {k: [] for k in ranks}
    for _ in range(steps):
        ids = torch.randint(0, 128, (8, 32), generator=gen)
        loss = model(input_ids=ids, labels=ids).loss + exact()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            e_vals.append(exact().item())
            for k in ranks:
                f_vals[k].append(facs[k]().item())
    e = torch.tensor(e_vals, dtype=torch.float64)
    out = {}
    for k in ranks:
        f = torch.tensor(f_vals[k], dtype=torch.float64)
        rel = (f - e).abs() / e
        corr = torch.corrcoef(torch.stack([e, f]))[0, 1].item()
        out[k] = (corr, rel.median().item(), rel.max().item())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ranks", default="1,4,16,64")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ranks = [int(r) for r in a.ranks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("flat", "lowrank"):
            res = track(make_vector(Path(tmp), kind), a.steps, ranks)
            for k, (corr, med, mx) in res.items():
                print(f"{kind:8} k={k:3d}  corr={corr:.4f}  rel.err median={med:.4f} max={mx:.4f}")


if __name__ == "__main__":
    main()
