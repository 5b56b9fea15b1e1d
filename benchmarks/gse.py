"""GSE vs PEFT LoRA (equal trainable parameters) vs a per-expert loop: train-step time and peak memory on CPU.

Every variant trains the same random `transformers` Llama (built from a config, seeded) on the same
random tokens, each in its own process (so peak RSS is its own). Variants and presets are interleaved
and the median of `--repeats` runs is reported with its range, so other load on a shared machine
distorts the ratios less. Besides wall
time it reports process CPU time per step, which a busy machine distorts less (with `--threads 1`
there is no thread spin-waiting in it either).

- gse:  capvector.gse (stacked experts, gate on the rank dimension, anchored exact init).
- lora: PEFT LoRA on the same modules, rank chosen so its trainable parameters match GSE's.
- loop: the same GSE layers computing the same function, but the straightforward way (the reference's):
        one small matmul pair per expert and branch, tokens gathered per routed expert and scattered back.
- loop-noanchor: the loop without the anchor branch (the reference's forward; half the adapter work).
`--init` also times GSE's SVD initialisation (`get_peft_model`) on a model of about `--init-params`.

    python benchmarks/gse.py [--preset w128,100m] [--steps 6] [--repeats 3] [--init] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {  # Llama shapes; "100m" is about 100M parameters (the size), "small" is quick,
    # "w128" has the tiny VLA's widths and tokens per step (width 128, MLP 512, 4 blocks, batch 64 × 72 tokens)
    "w128": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 256, "batch": 64, "seq": 72},
    "small": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 6,
              "num_key_value_heads": 6, "vocab_size": 8000, "batch": 4, "seq": 64},
    "100m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 12, "vocab_size": 16000, "batch": 4, "seq": 128},
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _llama(preset: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in preset.items() if k not in ("batch", "seq")}
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg, max_position_embeddings=preset["seq"]))


def _gse_trainable(model, r: int, experts: int, generalized: int) -> tuple[int, int]:
    """(GSE trainable parameters, Σ(in + out)) over the targeted Linears, from the shapes alone."""
    import torch

    params = fan = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            params += r * (m.in_features + m.out_features) + (experts - generalized) * m.in_features
            fan += m.in_features + m.out_features
    return params, fan


def _loop_branch(layer, adapter, flat, dropped, a, b, router):
    """One adapter branch the straightforward way: a Python loop over experts, tokens gathered per routed
    expert and scattered back (how the reference computes it). Returns the output and the routing."""
    import torch

    from capvector.gse.layer import route

    ranks, g = layer.gse_ranks[adapter], int(layer.gse_settings[adapter]["num_generalized"])
    scale = layer.gse_scale[adapter]
    starts = [sum(ranks[:j]) for j in range(len(ranks))]
    out = torch.zeros(flat.shape[0], layer.out_features, dtype=a.dtype)
    for j in range(g):
        sl = slice(starts[j], starts[j] + ranks[j])
        out = out + (dropped @ a[sl].T) @ b[:, sl].T * (scale[starts[j]] / g)
    gate, log_probs, top_i = route(flat, router, int(layer.gse_settings[adapter]["top_k"]))
    picked = torch.zeros_like(gate, dtype=torch.bool).scatter_(-1, top_i, True)
    for e in range(len(ranks) - g):
        j = g + e
        rows = torch.where((top_i == e).any(-1))[0]
        sl = slice(starts[j], starts[j] + ranks[j])
        y = (dropped[rows] @ a[sl].T) @ b[:, sl].T * scale[starts[j]]
        out = out.index_add(0, rows, y * gate[rows, e, None])
    return out, (log_probs, log_probs.exp(), picked)  # what the stacked layer keeps for the aux loss


def _loop_delta(layer, adapter, x, anchored=True):
    """The GSE layer's adapter term with per-expert loops: f_θ(x) − c·f_θ0(x) (anchored=False: f_θ only,
    i.e. the reference's forward, which does half the work)."""
    a = layer.gse_A[adapter]
    flat = x.to(a.dtype).reshape(-1, layer.in_features)
    dropped = layer.gse_dropout[adapter](flat)
    out, routing = _loop_branch(layer, adapter, flat, dropped, a, layer.gse_B[adapter], layer.gse_router[adapter])
    layer._last_route[adapter] = routing  # so gse_aux_loss() costs the same in every variant
    if anchored:
        out0, _ = _loop_branch(layer, adapter, flat, dropped, layer.gse_A0[adapter], layer.gse_B0[adapter],
                               layer.gse_router0[adapter])
        out = out - layer.gse_settings[adapter]["init_coefficient"] * out0
    return out.reshape(*x.shape[:-1], layer.out_features)


def _check_loop_matches(model, loop_fn) -> None:
    """The loop variant must compute what the stacked layer computes (eval mode, after moving the factors)."""
    import torch

    import capvector.gse as gse

    layer = next(m for m in model.modules() if isinstance(m, gse.GSELinear))
    layer.eval()
    with torch.no_grad():
        layer.gse_A["default"].add_(0.01 * torch.randn_like(layer.gse_A["default"]))
        x = torch.randn(32, layer.in_features)
        expected = layer.adapter_delta("default", x)
        got = loop_fn(layer, "default", x)
        layer.gse_A["default"].copy_(layer.gse_A0["default"])
    layer.train()
    if not torch.allclose(got, expected, atol=1e-5):
        raise SystemExit(f"loop variant disagrees with the stacked layer: {(got - expected).abs().max():.3g}")


def _child(variant: str, preset_name: str, steps: int, threads: int) -> dict:
    import peft
    import torch

    import capvector.gse as gse

    torch.set_num_threads(threads)
    preset = PRESETS[preset_name]
    model = _llama(preset)
    base_params = sum(p.numel() for p in model.parameters())
    gse_params, fan = _gse_trainable(model, 16, 8, 1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if variant == "lora":
        rank = round(gse_params / fan)
        model = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.05,
                                                           target_modules=TARGETS))
    else:
        model = peft.get_peft_model(model, gse.GSEConfig(r=16, num_experts=8, num_generalized_experts=1,
                                                         top_k=2, target_modules=TARGETS))
        if variant in ("loop", "loop-noanchor"):
            anchored = variant == "loop"
            if anchored:
                _check_loop_matches(model, _loop_delta)
            for m in model.modules():
                if isinstance(m, gse.GSELinear):  # same layer, per-expert loops instead of stacking
                    m.adapter_delta = (lambda layer: lambda ad, x: _loop_delta(layer, ad, x, anchored))(m)
    wrap_s = time.perf_counter() - t
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, preset["vocab_size"], (preset["batch"], preset["seq"]),
                        generator=torch.Generator().manual_seed(1))
    model.train()
    times, cpu = [], []
    for step in range(steps + 2):  # two warm-up steps
        t, c = time.perf_counter(), time.process_time()
        loss = model(ids, labels=ids).loss
        if variant != "lora":
            loss = loss + model.gse_aux_loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "base_params": base_params, "trainable_params": trainable,
            "step_ms": 1000 * statistics.median(times), "cpu_ms": 1000 * statistics.median(cpu), "wrap_s": wrap_s,
            "peak_rss_mb": rss1 / 1024, "rss_growth_mb": (rss1 - rss0) / 1024}


def _init_child(target_params: float, threads: int) -> dict:
    """Time `get_peft_model(GSEConfig())` (the per-layer SVDs) on Llama shapes of about `target_params`."""
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import capvector.gse as gse
    from capvector.gse.layer import top_singular

    torch.set_num_threads(threads)
    hidden, inter, vocab = 2048, 5632, 32000  # TinyLlama-1.1B widths; depth chosen to reach the size
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((target_params - 2 * vocab * hidden) / per_layer))
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=vocab)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    params = sum(p.numel() for p in model.parameters())
    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")]
    t = time.perf_counter()
    for w in weights:  # baseline: torch.svd_lowrank, which the init called before (its result varied with threads)
        torch.svd_lowrank(w.detach(), q=16, niter=2)
    lowrank_s = time.perf_counter() - t
    t = time.perf_counter()
    for w in weights:
        top_singular(w, 16, 2, 42)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    peft.get_peft_model(model, gse.GSEConfig())
    return {"init_s": time.perf_counter() - t, "params": params, "layers": layers, "svd_lowrank_s": lowrank_s,
            "top_singular_s": ours_s}


def _run_child(variant: str, preset: str, a: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--preset", preset, "--steps", str(a.steps),
           "--threads", str(a.threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                      .stdout.strip().splitlines()[-1])


def _summarise(runs: list[dict]) -> dict:
    """One row per variant: the median over repeats of each run's median step (and its range)."""
    row = dict(runs[0])
    for key in ("step_ms", "cpu_ms", "peak_rss_mb", "rss_growth_mb"):
        row[key] = statistics.median(r[key] for r in runs)
    row["step_ms_range"] = (min(r["step_ms"] for r in runs), max(r["step_ms"] for r in runs))
    row["repeats"] = len(runs)
    return row


def _print_table(preset_name: str, rows: dict[str, dict], threads: int) -> None:
    p = PRESETS[preset_name]
    ref = rows.get("lora")
    print(f"\n# GSE (r=16, E=8, G=1, top-2) vs LoRA vs per-expert loop: Llama preset {preset_name} "
          f"({next(iter(rows.values()))['base_params'] / 1e6:.1f}M params, width {p['hidden_size']}), batch "
          f"{p['batch']}×{p['seq']} tokens, {threads} threads, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}")
    print("| variant | trainable params | wall ms/step (median of repeats) | range | vs LoRA | CPU ms/step | vs LoRA "
          "| peak RSS MB | RSS growth MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows.values():
        ratio = r["step_ms"] / ref["step_ms"] if ref else float("nan")
        cpu_ratio = r["cpu_ms"] / ref["cpu_ms"] if ref else float("nan")
        low, high = r["step_ms_range"]
        print(f"| {r['variant']} | {r['trainable_params']:,} | {r['step_ms']:.0f} | {low:.0f}–{high:.0f} | "
              f"{ratio:.2f}× | {r['cpu_ms']:.0f} | {cpu_ratio:.2f}× | {r['peak_rss_mb']:.0f} | "
              f"{r['rss_growth_mb']:.0f} |")
    if "gse" in rows and "loop" in rows:
        print(f"\nloop / stacked: wall {rows['loop']['step_ms'] / rows['gse']['step_ms']:.2f}×, "
              f"CPU {rows['loop']['cpu_ms'] / rows['gse']['cpu_ms']:.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small",
                    help=f"one or more of {sorted(PRESETS)}, comma-separated (e.g. w128,100m: both widths in one run)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant and preset; the median is reported")
    ap.add_argument("--variants", default="gse,lora,loop,loop-noanchor")
    ap.add_argument("--init", action="store_true", help="also time SVD init on a ~--init-params model")
    ap.add_argument("--init-params", type=float, default=1.0e9)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "init":
        print(json.dumps(_init_child(a.init_params, a.threads)))
        return
    if a.child:
        print(json.dumps(_child(a.child, a.preset, a.steps, a.threads)))
        return
    presets = a.preset.split(",")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"--preset: unknown {unknown}; expected names from {sorted(PRESETS)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    runs: dict[str, dict[str, list[dict]]] = {p: {} for p in presets}
    for _ in range(a.repeats):  # interleaved, so a burst of load elsewhere hits every variant alike
        for preset in presets:
            for variant in a.variants.split(","):
                row = _run_child(variant, preset, a, env)
                print(f"{preset} {variant}: {row['step_ms']:.0f} ms/step", file=sys.stderr, flush=True)  # progress
                runs[preset].setdefault(variant, []).append(row)
    results = {p: {v: _summarise(rs) for v, rs in by_variant.items()} for p, by_variant in runs.items()}
    for preset, rows in results.items():
        _print_table(preset, rows, a.threads)
    init = None
    if a.init:
        cmd = [sys.executable, __file__, "--child", "init", "--init-params", str(a.init_params),
               "--threads", str(a.threads)]
        init = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                          .stdout.strip().splitlines()[-1])
        print(f"SVD init (get_peft_model, default GSEConfig) on a {init['params'] / 1e9:.2f}B-parameter Llama "
              f"({init['layers']} layers): {init['init_s']:.1f} s; the SVDs alone: top_singular "
              f"{init['top_singular_s']:.1f} s, torch.svd_lowrank {init['svd_lowrank_s']:.1f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results, "runs": runs, "init": init}, f, indent=2)


if __name__ == "__main__":
    main()
