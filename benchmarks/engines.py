"""Step-time overhead of the orthogonal regulariser and of GSE under DDP and FSDP2, 2 CPU processes (gloo).

Same script, same run: a random `transformers` Llama, a dense capability vector from two seeded perturbations,
then per engine (ddp, fsdp2) and configuration the median wall time of an SGD step (forward, losses, backward,
step) over --steps steps after 2 warm-up steps, on rank 0. Configurations: full (plain full fine-tuning),
full+orth (factored form, k = --rank, every `*layers.*proj.weight`), lora (PEFT LoRA r = --rank on every
projection), gse (GSE r = --rank, E = 8, global load-balancing loss). Ratios are against `full` (orth) and
`lora` (gse) of the same engine in the same run.

    python benchmarks/engines.py [--hidden 128 --layers 4 --steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = ("full", "full+orth", "lora", "gse")


def _model(a):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=a.seq)
    return LlamaForCausalLM(cfg)


def _vector(a, root: Path) -> Path:
    import capvector

    for role, seed in (("sft", 1), ("aux", 2)):
        model = _model(a)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / role)
    capvector.extract(root / "sft", root / "aux", root / "vec", progress=False)
    return root / "vec"


def _build(a, engine: str, config: str, vec: Path):
    from peft import LoraConfig, get_peft_model
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from capvector.gse import GSEConfig
    from capvector.gse.distributed import aux_loss_across_ranks
    from capvector.orth import OrthogonalRegularizer

    model = _model(a)
    if config == "lora":
        model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=PROJ))
    elif config == "gse":
        model = get_peft_model(model, GSEConfig(r=a.rank, num_experts=8, dropout=0.0, target_modules=PROJ))
    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in [m for m in model.modules() if isinstance(m, LlamaDecoderLayer)]:
            fully_shard(layer)
        fully_shard(model)
        wrapped = model
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    extra = None
    if config == "full+orth":
        reg = OrthogonalRegularizer.from_vector(model, vec, mode="factored", rank=a.rank,
                                                include=["*layers.*proj.weight"])
        reg.expect_updates_by(opt)
        extra = reg
    elif config == "gse":
        extra = lambda: aux_loss_across_ranks(model)  # noqa: E731
    return wrapped, opt, extra


def _worker(rank: int, a, vec: str, out: str, init_file: str) -> None:
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(rank))
        results = {}
        for engine in ("ddp", "fsdp2"):
            for config in CONFIGS:
                model, opt, extra = _build(a, engine, config, Path(vec))
                times = []
                for step in range(a.steps + 2):
                    dist.barrier()
                    t0 = time.perf_counter()
                    loss = model(input_ids=ids, labels=ids).loss
                    if extra is not None:
                        loss = loss + extra()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if step >= 2:
                        times.append(time.perf_counter() - t0)
                results[f"{engine}/{config}"] = statistics.median(times)
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="sequences per process")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vec = _vector(a, root)
        out = root / "times.json"
        mp.spawn(_worker, args=(a, str(vec), str(out), str(root / "rdzv")), nprocs=2, join=True)
        t = json.loads(out.read_text())
    print("| engine | full | full+orth | orth ratio | lora | gse | gse / lora |")
    print("|---|---|---|---|---|---|---|")
    for engine in ("ddp", "fsdp2"):
        g = {c: t[f"{engine}/{c}"] * 1000 for c in CONFIGS}
        print(f"| {engine} | {g['full']:.1f} ms | {g['full+orth']:.1f} ms | {g['full+orth'] / g['full']:.2f}× "
              f"| {g['lora']:.1f} ms | {g['gse']:.1f} ms | {g['gse'] / g['lora']:.2f}× |")


if __name__ == "__main__":
    main()
