"""Per-step wall time and peak RSS of plain SFT vs the orthogonal regulariser's forms, on CPU.

Same script, same run: a random `transformers` Llama (default ~17M parameters, see --hidden/--layers), a dense
capability vector extracted with `capvector.extract` from two seeded perturbations, then one subprocess per
configuration (so ru_maxrss is that configuration's peak): sft, exact, factored (k=--rank), lora-sft, lora.
Regularised: every `*layers.*proj.weight` matrix (embeddings/lm_head excluded, see docs/orthogonal.md). Reports
the median wall time and the median process CPU time per step (with one thread, CPU time is what a loaded
machine distorts least), and for the regularised modes the regulariser's own cost as a share of an SFT step
measured in the same process.

    python benchmarks/orth.py [--hidden 512 --layers 6 --steps 5 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

INCLUDE = ["*layers.*proj.weight"]


def _config(a):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                       num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=8,
                       max_position_embeddings=a.seq)


def _model(a):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(_config(a))


def prepare(a, root: Path) -> Path:
    """θ_sft, θ_aux as saved checkpoints → a dense vector directory."""
    import capvector

    for role, seed in (("sft", 1), ("aux", 2)):
        m = _model(a)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        m.save_pretrained(root / role)
        del m
    capvector.extract(root / "sft", root / "aux", root / "vec", include=INCLUDE, progress=False)
    return root / "vec"


def run_one(a, mode: str, vec: str) -> dict:
    """Time `a.steps` AdamW steps (after 2 warm-up steps) of LM loss (+ regulariser)."""
    from capvector.orth import OrthogonalRegularizer

    torch.set_num_threads(a.threads)
    model = _model(a)
    if mode.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))
    reg = None
    if mode in ("exact", "factored", "lora"):
        reg = OrthogonalRegularizer.from_vector(model, vec, mode=mode, rank=a.rank, include=INCLUDE)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    times, cpu_times = [], []
    for i in range(a.steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        if reg is not None:
            loss = loss + reg()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    times.sort()
    cpu_times.sort()
    own = _regularizer_share(a, model, reg, opt, ids) if reg is not None else {}
    return {**own, "mode": mode, "step_s": times[len(times) // 2], "cpu_s": cpu_times[len(cpu_times) // 2],
            "peak_rss_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "reg_terms": 0 if reg is None else len(reg.terms)}


def _regularizer_share(a, model, reg, opt, ids) -> dict:
    """The regulariser's own forward + backward against a plain SFT step, interleaved in this one process (CPU
    time, median): a finer measure than two processes' step times, whose layout noise is about ±2%."""
    sft, own = [], []
    for _ in range(a.steps):
        c0 = time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        c1 = time.process_time()
        opt.zero_grad(set_to_none=True)
        reg().backward()
        c2 = time.process_time()
        sft.append(c1 - c0)
        own.append(c2 - c1)
    sft.sort()
    own.sort()
    return {"inproc_sft_cpu_s": sft[len(sft) // 2], "reg_cpu_s": own[len(own) // 2],
            "reg_share": own[len(own) // 2] / sft[len(sft) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="sft,exact,factored,lora-sft,lora")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(run_one(a, a._child[0], a._child[1])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        vec = prepare(a, Path(tmp))
        rows = {}
        for mode in a.modes.split(","):
            args = list(sys.argv[1:])
            out = subprocess.run([sys.executable, __file__, *args, "--_child", mode, str(vec)], check=True,
                                 capture_output=True, text=True).stdout
            rows[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, threads={a.threads}, hidden={a.hidden}, layers={a.layers}, "
          f"batch={a.batch}x{a.seq}, rank={a.rank}")
    print(f"{'mode':10} {'params(M)':>9} {'terms':>5} {'step s':>8} {'x base':>7} {'cpu s':>8} {'x base':>7} "
          f"{'peak MiB':>9} {'x base':>7}")
    for mode, r in rows.items():
        base = rows.get("lora-sft" if mode.startswith("lora") else "sft", r)
        t_ratio, m_ratio = r["step_s"] / base["step_s"], r["peak_rss_mib"] / base["peak_rss_mib"]
        print(f"{mode:10} {r['params_m']:9.1f} {r['reg_terms']:5d} {r['step_s']:8.3f} {t_ratio:7.3f} "
              f"{r['cpu_s']:8.3f} {r['cpu_s'] / base['cpu_s']:7.3f} {r['peak_rss_mib']:9.0f} {m_ratio:7.3f}")
        if "reg_share" in r:
            print(f"{'':10} in one process: regulariser fwd+bwd {r['reg_cpu_s']:.3f} s = {r['reg_share']:.3f} of "
                  f"an SFT step ({r['inproc_sft_cpu_s']:.3f} s)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
