"""Regulariser and VLA-GSE overhead at GPU scale: step time of a ~1B Llama in bf16 at real batch sizes.

One process, one model size, every configuration timed with CUDA events after warm-up steps, baselines in the same
run: full fine-tuning (AdamW) vs + L_orth factored (k=16) vs + L_orth exact; PEFT LoRA (r=16, all linear) vs LoRA +
L_orth in its LoRA form; VLA-GSE (r=16, 8 experts, top-2) vs LoRA at equal trainable parameters. The capability vector
comes from `capvector.extract` of two seeded perturbations of the model, as a user would make it.

    python benchmarks/gpu_overhead.py --out gpu.json [--hidden 2048 --layers 16 --tokens 8x1024,32x1024]
    python benchmarks/gpu_overhead.py --tiny      # a seconds-long check of the script itself (CPU is fine)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

INCLUDE = ["*layers.*proj.weight"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(a, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                      max_position_embeddings=max(int(t.split("x")[1]) for t in a.tokens.split(",")))
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(torch.bfloat16)


def _vector(a, device, root: Path) -> Path:
    import capvector

    for role, seed in (("sft", 1), ("aux", 2)):
        m = _model(a, device)
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype))
        m.save_pretrained(root / role)
        del m
    capvector.extract(root / "sft", root / "aux", root / "vec", include=INCLUDE, progress=False, dtype="bf16")
    return root / "vec"


def _peft(model, kind: str, r: int):
    from peft import LoraConfig, get_peft_model

    if kind == "lora":
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=TARGETS))
    import capvector.gse  # noqa: F401  (registers the tuner)
    from capvector.gse import GSEConfig

    return get_peft_model(model, GSEConfig(r=16, num_experts=8, top_k=2, target_modules=TARGETS))


def _time(model, reg, ids, steps: int, warmup: int, device) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    aux = getattr(model, "gse_aux_loss", None)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        if reg is not None:
            loss = loss + reg()
        if aux is not None:
            loss = loss + aux()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize()
            dt = start.elapsed_time(end) / 1000
        else:
            dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    times.sort()
    return {"step_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def _lora_rank_matching_gse(model) -> int:
    """LoRA rank whose trainable parameters match GSE's (r=16 in the experts plus one router row per expert)."""
    params = fan = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            params += 16 * (m.in_features + m.out_features) + 7 * m.in_features
            fan += m.in_features + m.out_features
    return max(1, round(params / fan))


def _measure(a, mode: str, tokens: str, ids: torch.Tensor, vec: Path, device) -> dict:
    from capvector.orth import OrthogonalRegularizer

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t_setup = time.perf_counter()
    model = _model(a, device)
    params = sum(p.numel() for p in model.parameters())
    reg = None
    if mode in ("lora", "lora+orth"):
        model = _peft(model, "lora", a.rank)
    elif mode == "lora@gse":
        model = _peft(model, "lora", _lora_rank_matching_gse(model))
    elif mode == "gse":
        model = _peft(model, "gse", a.rank)
    if mode in ("factored", "exact", "lora+orth"):
        reg = OrthogonalRegularizer.from_vector(model, vec, mode="lora" if mode == "lora+orth" else mode,
                                                rank=a.rank, include=INCLUDE)
    if device.type == "cuda":
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t_setup  # model build + adapter init (GSE's SVDs) + regulariser
    return {"mode": mode, "tokens": tokens, "params": params, "setup_s": setup_s,
            **_time(model, reg, ids, a.steps, a.warmup, device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", default="8x1024,32x1024", help="batch x sequence settings, comma-separated")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--modes", default="sft,factored,exact,lora,lora+orth,gse,lora@gse")
    ap.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, measures nothing")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.tiny:
        a.hidden, a.intermediate, a.layers, a.heads, a.vocab, a.tokens, a.steps, a.warmup = (
            64, 128, 2, 4, 256, "2x16", 2, 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        vec = _vector(a, device, Path(tmp))
        print(f"vector extracted in {time.perf_counter() - t0:.1f} s", flush=True)
        for tokens in a.tokens.split(","):
            b, s = map(int, tokens.split("x"))
            ids = torch.randint(0, a.vocab, (b, s), device=device, generator=torch.Generator(device).manual_seed(0))
            for mode in a.modes.split(","):
                try:
                    row = _measure(a, mode, tokens, ids, vec, device)
                except Exception as exc:  # one broken configuration must not cost the others their device time
                    row = {"mode": mode, "tokens": tokens, "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ok = [r for r in rows if "error" not in r]
    base = {("sft", t): r["step_s"] for r in ok for t in [r["tokens"]] if r["mode"] == "sft"}
    lora = {t: r["step_s"] for r in ok for t in [r["tokens"]] if r["mode"] == "lora"}
    lora_eq = {t: r["step_s"] for r in ok for t in [r["tokens"]] if r["mode"] == "lora@gse"}
    for r in ok:
        ref = {"factored": base.get(("sft", r["tokens"])), "exact": base.get(("sft", r["tokens"])),
               "lora+orth": lora.get(r["tokens"]), "gse": lora_eq.get(r["tokens"])}.get(r["mode"])
        r["ratio"] = r["step_s"] / ref if ref else None
    info = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device.type == "cuda" else
            platform.processor(), "torch": torch.__version__, "args": vars(a), "rows": rows}
    print(json.dumps({r["mode"] + "@" + r["tokens"]: round(r["ratio"], 3) for r in ok if r["ratio"]}))
    if a.out:
        Path(a.out).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
