"""The capability-vector mechanics end to end on a tiny random `transformers` Llama, in seconds.

θ_pre is a randomly initialised tiny Llama saved as sharded safetensors. θ_sft and θ_aux are two
real fine-tunes from it on the same synthetic token data, same seed, order and optimiser; θ_aux adds
an auxiliary objective (align a middle layer's hidden states with fixed target features through a
projector that is discarded). Then extract, merge and inspect run exactly as on a real model, and
the merged weights are checked against θ_pre + λ·(θ_aux − θ_sft) computed independently in memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from capvector.vectors import VectorWeight, extract, inspect, merge


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def fine_tune(model, steps: int, aux_weight: float, seed: int = 1) -> None:
    """Next-token SFT on a synthetic copy task; with aux_weight > 0, plus hidden-state alignment."""
    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    projector = torch.nn.Sequential(torch.nn.Linear(hidden, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
    targets = torch.randn(model.config.vocab_size, 32, generator=gen)  # a frozen "teacher" feature per token
    params = list(model.parameters()) + (list(projector.parameters()) if aux_weight else [])
    opt = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    for _ in range(steps):
        half = torch.randint(0, model.config.vocab_size, (16, 8), generator=gen)
        ids = torch.cat([half, half], dim=1)
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
        loss = out.loss
        if aux_weight:
            h = out.hidden_states[model.config.num_hidden_layers // 2]
            cos = F.cosine_similarity(projector(h), targets[ids], dim=-1)
            loss = loss + aux_weight * (1 - cos.mean())
        opt.zero_grad()
        loss.backward()
        opt.step()


def run(workdir: str | Path, steps: int = 30, weight: float = 1.0) -> dict:
    """Build the three checkpoints, extract, merge, inspect and verify; returns a summary."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    t0 = time.perf_counter()
    paths = {k: work / k for k in ("pretrained", "sft", "aux")}
    pre = tiny_llama()
    pre.save_pretrained(paths["pretrained"], max_shard_size="200KB")
    for role, aux_weight in (("sft", 0.0), ("aux", 0.5)):
        model = tiny_llama()
        fine_tune(model, steps, aux_weight)
        model.save_pretrained(paths[role], max_shard_size="200KB")
        console.print(f"fine-tuned θ_{role} ({steps} steps{', with spatial-style alignment' if aux_weight else ''})")
    vec_dir, merged_dir = work / "vector", work / "meta"
    extract(paths["sft"], paths["aux"], vec_dir, pretrained=paths["pretrained"], overwrite=True, progress=False)
    merge(paths["pretrained"], [VectorWeight(vec_dir, weight)], merged_dir, overwrite=True, progress=False)
    report = inspect(vec_dir, base=paths["pretrained"])
    err = _verify(paths, merged_dir, weight)
    shards = sorted(p.name for p in merged_dir.glob("*.safetensors"))
    table = Table("layer", "‖τ_cap‖", "‖τ‖/‖θ_pre‖", title="capability vector per layer")
    for row in report["layers"]:
        table.add_row(row["layer"], f"{row['norm']:.4f}", f"{row['rel_norm']:.4f}")
    console.print(table)
    summary = {
        "workdir": str(work),
        "vector_tensors": report["totals"]["tensors"],
        "vector_norm": report["totals"]["norm"],
        "vector_rel_norm": report["totals"]["rel_norm"],
        "merged_shards": len(shards),
        "max_abs_error_vs_direct_formula": err,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    console.print_json(json.dumps(summary))
    return summary


def _verify(paths: dict[str, Path], merged_dir: Path, weight: float) -> float:
    """Max |θ_meta − (θ_pre + λ(θ_aux − θ_sft))| over all parameters, computed with transformers."""
    from transformers import LlamaForCausalLM

    models = {k: LlamaForCausalLM.from_pretrained(p).state_dict() for k, p in paths.items()}
    merged = LlamaForCausalLM.from_pretrained(merged_dir).state_dict()
    err = 0.0
    for name, value in merged.items():
        direct = models["pretrained"][name] + weight * (models["aux"][name] - models["sft"][name])
        err = max(err, float((value - direct).abs().max()))
    return err
