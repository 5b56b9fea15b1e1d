"""`report.md` and PNG plots from `results.json`: tables with intervals and n, plain verdicts, figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capvector.io.atomic import atomic_file, atomic_write_text
from capvector.objectives.teachers import objective_name
from capvector.pipeline.config import VALIDATION_EVAL_SEED, VALIDATION_TRAIN_SEEDS

PLOTS = ("success_vs_steps.png", "methods.png", "ood.png", "merge_choices.png", "orth_sweep.png", "cost.png",
         "tuners.png")


def rate_cell(r: dict[str, Any] | None) -> str:
    """A pooled success rate as "pc [lo, hi] (n=…)", "-" when there is none."""
    if not r or r.get("pc") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['pc']:.1f} [{lo:.0f}, {hi:.0f}] (n={r['n']})"


def _diff(f: dict[str, Any]) -> str:
    if "episode_ci95_pp" not in f:  # results.json written before seed-level tests
        return _delta(f)
    elo, ehi = f["episode_ci95_pp"]
    seeds = "×".join(str(n) for n in f["n_seeds"])
    return f"{_delta(f)} ({f['test']}, {seeds} seeds; episodes: [{elo:+.1f}, {ehi:+.1f}])"


def _seeds(r: dict[str, Any] | None) -> str:
    if not r or not r.get("by_seed"):
        return "-"
    return ", ".join(f"{v:.0f}" for v in r["by_seed"].values())


def render_markdown(res: dict[str, Any], videos: list[str]) -> str:
    c, methods = res["config"], res["methods"]
    budgets = [str(b) for b in c["down_budgets"]]
    out = [f"# CapVector demo report ({c['mode']} mode)", "",
           f"{res['date']} · {_cpu(res['machine'])}, {res['machine']['cpus']} CPUs, torch "
           f"{res['machine']['torch']}" + (f" · total {res['total_s'] / 60:.1f} min" if res.get("total_s") else ""),
           *_kernel_warning(res),
           "", "Success rates are % of rollouts on the held-out downstream tasks (D_down), pooled over training seeds "
           f"{c['seeds']}, with 95% Wilson intervals and the number of episodes n (a description: episodes of one "
           "trained policy are not independent). A difference between methods is tested with the training seed "
           "as the unit: the mean of per-seed differences with a paired t interval over the seeds both ran; a "
           "finding is **shown** only when that interval excludes zero. Newcombe's episode-level interval is "
           "printed beside it for comparison." + (" Quick mode's budgets cannot test any effect: its verdicts "
           "read *not assessed*." if c["mode"] == "quick" else ""),
           _ranges_line(c), *_scene_lines(c), "",
           "## Findings against the papers", "", "| claim | measured difference | verdict |", "| --- | --- | --- |"]
    for f in res["findings"]:
        out.append(f"| {f['claim']} | {_diff(f)} ({f['a_pc']:.1f}% vs {f['b_pc']:.1f}%) | {f['verdict']} |")
    cap = res["cap"]
    out += ["", "## Capability extraction (D_cap)", "",
            f"SFT and aux-SFT ran {c['cap_steps']} steps from θ_pre with the same data order, seed and optimiser; "
            f"auxiliary objective: {objective_name(c['teacher'])} (teacher `{c['teacher']}`), weight α = "
            f"{c['aux_weight']}. Rollouts on the D_cap tasks:", "",
            "| policy | success % |", "| --- | --- |",
            f"| θ_pre (no fine-tuning) | {rate_cell(cap['pretrained'])} |", f"| θ_sft | {rate_cell(cap['sft'])} |",
            f"| θ_aux | {rate_cell(cap['aux'])} |", ""]
    if res.get("vector"):
        out.append(f"τ_cap = θ_aux − θ_sft ({c['vector_preset']}): {res['vector'].get('tensors')} tensors, "
                   f"‖τ‖ = {res['vector'].get('norm', float('nan')):.4g}; θ_meta = θ_pre + {c['vector_weight']}·τ_cap.")
    out += ["", "## Downstream success vs training steps (Table 1 / Fig. 2 analogue)", "",
            "Step 0 is the starting point before downstream training (θ_pre, or θ_meta for CapVector).", "",
            "| method | 0 steps | " + " | ".join(f"{b} steps" for b in budgets) + " |",
            "| --- | --- | " + " | ".join("---" for _ in budgets) + " |"]
    for m, v in methods.items():
        if m.startswith("tuner-") or not all(b in v["budgets"] for b in budgets):
            continue
        out.append(f"| {v['label']} | {rate_cell(v.get('start'))} | "
                   + " | ".join(rate_cell(v["budgets"][b]) for b in budgets) + " |")
    out += ["", f"Per training seed ({', '.join(map(str, c['seeds']))}), success %:", "",
            "| method | " + " | ".join(f"{b} steps" for b in budgets) + " |",
            "| --- | " + " | ".join("---" for _ in budgets) + " |"]
    out += [f"| {v['label']} | " + " | ".join(_seeds(v["budgets"].get(b)) for b in budgets) + " |"
            for v in methods.values() if any(b in v["budgets"] for b in budgets)]
    out += ["", "![success vs steps](success_vs_steps.png)", "", "## Cost", "",
            "| method | s / step | × SFT | steps / run | s / run | trainable params |",
            "| --- | --- | --- | --- | --- | --- |"]
    for m, v in methods.items():
        cost = v["cost"]
        out.append(f"| {v['label']} | {_num(cost['s_per_step'], 3)} | {_num(res['cost_ratio_vs_sft'].get(m), 2)} | "
                   f"{cost.get('steps_per_run', '-')} | {_num(cost.get('train_s_per_run'), 0)} | "
                   f"{_count(cost.get('trainable_parameters'))} |")
    out += ["", "s / run is the training stage's wall time per seed (data loading and snapshots included).", ""]
    out += _extraction_line(res.get("extraction_s"), c)
    out += ["", "![cost](cost.png)", "", "## Out of distribution (perturbed D_down, final budget)", ""]
    variants = sorted({k for v in methods.values() for k in v["ood"]})
    if variants:
        out += ["| method | " + " | ".join(variants) + " | pooled |", "| --- |" + " --- |" * (len(variants) + 1)]
        out += [f"| {v['label']} | " + " | ".join(rate_cell(v["ood"].get(x)) for x in variants)
                + f" | {rate_cell(v['ood_pooled'])} |" for v in methods.values() if v["ood"]]
        out += ["", "![ood](ood.png)", ""]
    else:
        out += ["No perturbation suite in this run (`ood_perturbations` is empty).", ""]
    out += _dcap_section(res, budgets) + _preservation_section(res)
    out += [f"## Merge choices (CapVector at {budgets[0]} steps)", "",
            "| variant | λ | selection | success % |", "| --- | --- | --- | --- |"]
    for r in res["merge_choices"]:
        out.append(f"| {r['variant']} | {r['weight']:g} | {r['preset']} | {rate_cell(r)} |")
    if len(res["merge_choices"]) > 1:
        out += ["", "![merge choices](merge_choices.png)", ""]
    else:
        out += ["", "No λ or selection sweep in this mode (run `capvector demo --extended`).", ""]
    out += [f"## λ_orth sweep (at {budgets[-1]} steps)", "", "| λ_orth | success % |", "| --- | --- |"]
    out += [f"| {r['orth_weight']:g} | {rate_cell(r)} |" for r in res["orth_sweep"]]
    if len(res["orth_sweep"]) > 1:
        out += ["", "![orth sweep](orth_sweep.png)", ""]
    else:
        out += ["", "No CapVector run without L_orth or at other λ_orth in this mode (run `capvector demo "
                "--extended`).", ""]
    if not res["tuners"]:
        out += ["## VLA-GSE vs LoRA vs full fine-tuning", "",
                "Not run in this mode (run `capvector demo --extended`).", ""]
    else:
        out += [f"## VLA-GSE vs LoRA vs full fine-tuning (from θ_pre, {c['tuner_steps']} steps)", "",
                "| tuner | trainable params | in distribution | OOD pooled |", "| --- | --- | --- | --- |"]
        for t in res["tuners"]:
            v = methods[f"tuner-{t}"]
            out.append(f"| {v['label']} | {_count(v['cost'].get('trainable_parameters'))} | "
                       f"{rate_cell(v['budgets'][str(c['tuner_steps'])])} | {rate_cell(v['ood_pooled'])} |")
        out += ["", "![tuners](tuners.png)", ""]
    out += _gse_ablation_section(res)
    if videos:
        out += ["## Rollout videos", ""] + [f"- [{Path(v).name}]({v})" for v in videos] + [""]
    out += ["## Configuration", "", "```json", _json(c), "```", ""]
    return "\n".join(out)


def _scene_lines(c: dict[str, Any]) -> list[str]:
    """Where the data and rollouts were, when not the clean scene (runs recorded before scenes have no field)."""
    out = []
    if c.get("down_scene"):
        out.append(f"Novel environment: D_down was collected and every D_down rollout ran in the fixed scene "
                   f"`{c['down_scene']}` (docs/simulator.md), which θ_pre, D_cap, θ_sft and θ_aux never saw.")
    if c.get("cap_scene"):
        out.append(f"D_cap was recorded, and its rollouts ran, in the scene `{c['cap_scene']}`.")
    return [""] + out if out else []


def _dcap_section(res: dict[str, Any], budgets: list[str]) -> list[str]:
    """Vector quality (CapVector's Finding 5): the same extraction on D_cap recorded in other scenes."""
    rows = res.get("dcap_scenes") or []
    if not rows:
        return []
    out = ["## Vector quality: D_cap scenes (CapVector's Finding 5)", "",
           "Each row extracts τ from SFT and aux-SFT on D_cap recorded in that scene (same tasks, layouts, seeds and "
           "steps) and fine-tunes CapVector from θ_pre + λ·τ; the findings above test each against the main vector.",
           "", "| D_cap scene | ‖τ‖ | " + " | ".join(f"{b} steps" for b in budgets) + " | OOD pooled |",
           "| --- | --- | " + " | ".join("---" for _ in budgets) + " | --- |"]
    for r in rows:
        norm = r["vector"].get("norm")
        out.append(f"| `{r['scene']}` | {'-' if norm is None else f'{norm:.4g}'} | "
                   + " | ".join(rate_cell(r["budgets"].get(b)) for b in budgets) + f" | {rate_cell(r['ood_pooled'])} |")
    return out + [""]


def _preservation_section(res: dict[str, Any]) -> list[str]:
    """Knowledge preservation (VLA-GSE): success on the pretraining tasks after each downstream fine-tune."""
    ref = res.get("pretrain_reference")
    if not ref:
        return []
    out = ["## Knowledge preservation (pretraining tasks after downstream fine-tuning)", "",
           "Rollouts on θ_pre's own pretraining tasks (clean scene, the same episodes for every policy) after each "
           "fine-tune's final budget. The change vs θ_pre is the mean over training seeds of (seed's rate − θ_pre's "
           "rate) with a t interval over seeds; negative is forgetting.", "",
           "| method | steps | pretraining-task success % | change vs θ_pre | per seed |",
           "| --- | --- | --- | --- | --- |",
           f"| θ_pre (no fine-tuning) | 0 | {rate_cell(ref)} | - | - |"]
    for v in res["methods"].values():
        p = v.get("pretrain")
        if p:
            ch = p["change"]
            lo, hi = ch["ci95_pp"]
            out.append(f"| {v['label']} | {p['steps']} | {rate_cell(p)} | {ch['diff_pp']:+.1f} pp [{lo:+.1f}, "
                       f"{hi:+.1f}] | {_seeds(p)} |")
    return out + [""]


def _gse_ablation_section(res: dict[str, Any]) -> list[str]:
    """VLA-GSE's design ablations (its Table 3): the GSE arm and each gse_sweep row, Δ paired by seed."""
    rows = res.get("gse_ablations") or []
    if not rows:
        return []
    c = res["config"]
    ood = rows[0]["ood_pooled"] is not None
    base_params = rows[0]["trainable_parameters"]
    out = ["## VLA-GSE design ablations (Table 3)", "",
           f"Each row is the VLA-GSE arm (from θ_pre, {c['tuner_steps']} steps, the same seeds, data and learning "
           "rate) with the options shown in place of its own. Every row splits the same total rank r = "
           f"{c['gse_r']} over its experts and adapts the same layers, so the rows have equal trainable parameters "
           "but for the router (E − G rows per adapted layer): the Δ params column is the router's difference, "
           "read from each training run's record. Δ vs GSE is row − GSE, the mean of per-seed differences with a "
           "paired t interval over the seeds; these rows are descriptive, except the initialisation claims, which "
           "stand in the findings above.", "",
           "| row | options | trainable params | Δ params | in distribution | Δ vs GSE"
           + (" | OOD pooled | Δ vs GSE (OOD) |" if ood else " |"),
           "| --- | --- | --- | --- | --- | ---" + (" | --- | --- |" if ood else " |")]
    for r in rows:
        params = r["trainable_parameters"]
        delta = "-" if not params or not base_params or r["vs_gse"] is None else f"{params - base_params:+,}"
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        cells = [f"`{r['method']}`" if r["vs_gse"] else "VLA-GSE (the GSE arm)", options, _count(params), delta,
                 rate_cell(r["success"]), _delta(r["vs_gse"])]
        if ood:
            cells += [rate_cell(r["ood_pooled"]), _delta(r["vs_gse_ood"])]
        out.append("| " + " | ".join(cells) + " |")
    return out + ["", "![GSE ablations](gse_ablations.png)", ""]


def _delta(d: dict[str, Any] | None) -> str:
    """A seed-paired difference as "+x.x pp [lo, hi]"; "-" for the reference row."""
    if d is None:
        return "-"
    lo, hi = d["ci95_pp"]
    return f"{d['diff_pp']:+.1f} pp [{lo:+.1f}, {hi:+.1f}]"


def _extraction_line(ext: dict[str, float | None] | None, c: dict[str, Any]) -> list[str]:
    """CapVector's one-time cost (older runs' results.json lack it: no line)."""
    if not ext or ext.get("sft") is None or ext.get("aux") is None:
        return []
    once = sum(v for v in ext.values() if v)
    return [f"CapVector's one-time extraction, shared by every downstream fine-tune from θ_meta: θ_sft "
            f"{ext['sft']:.0f} s + θ_aux {ext['aux']:.0f} s ({c['cap_steps']} steps each on D_cap) + extract "
            f"{_num(ext.get('extract'), 1)} s + merge {_num(ext.get('merge'), 1)} s = {once:.0f} s."]


def _count(n: int | None) -> str:
    return "-" if not n else f"{n:,}"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=1)


def plot_all(res: dict[str, Any], directory: Path) -> list[Path]:
    """Write the report's figures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, methods = res["config"], res["methods"]
    budgets = [str(b) for b in c["down_budgets"]]
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = directory / name
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(path)

    def errbar(ax: Any, xs: list, rows: list[dict[str, Any]], **kw: Any) -> None:
        ys = [r["pc"] for r in rows]
        lo = [r["pc"] - r["ci95"][0] for r in rows]
        hi = [r["ci95"][1] - r["pc"] for r in rows]
        ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, marker="o", **kw)

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for m, v in methods.items():
        if m.startswith("tuner-") or not all(b in v["budgets"] for b in budgets):
            continue
        xs, rows = [int(b) for b in budgets], [v["budgets"][b] for b in budgets]
        if v.get("start"):
            xs, rows = [0, *xs], [v["start"], *rows]
        errbar(ax, xs, rows, label=v["label"])
    ax.set(xlabel="downstream training steps", ylabel="success % (D_down)", ylim=(-2, 102),
           title="Success vs training steps")
    ax.legend(fontsize=7)
    save(fig, "success_vs_steps.png")

    main = [m for m in res["main_methods"] if m in methods]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    _bars(ax, [methods[m]["label"] for m in main], [methods[m]["budgets"][budgets[-1]] for m in main])
    ax.set(ylabel="success % (D_down)", title=f"Methods at {budgets[-1]} steps", ylim=(0, 102))
    save(fig, "methods.png")

    variants = sorted({k for m in main for k in methods[m]["ood"]})
    if variants:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        width = 0.8 / max(1, len(main))
        for i, m in enumerate(main):
            rows = [methods[m]["ood"][x] for x in variants]
            xs = [j + i * width for j in range(len(variants))]
            ax.bar(xs, [r["pc"] for r in rows], width, label=methods[m]["label"],
                   yerr=[[r["pc"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["pc"] for r in rows]], capsize=2)
        ax.set_xticks([j + width * (len(main) - 1) / 2 for j in range(len(variants))], variants, fontsize=8)
        ax.set(ylabel="success %", title="Perturbed D_down (final budget)", ylim=(0, 102))
        ax.legend(fontsize=7)
        save(fig, "ood.png")

    if len(res["merge_choices"]) > 1:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        rows = res["merge_choices"]
        _bars(ax, [f"λ={r['weight']:g}\n{r['preset']}" for r in rows], rows)
        ax.set(ylabel=f"success % at {budgets[0]} steps", title="Merge choices", ylim=(0, 102))
        save(fig, "merge_choices.png")

    if len(res["orth_sweep"]) > 1:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        rows = res["orth_sweep"]
        _bars(ax, [f"{r['orth_weight']:g}" for r in rows], rows)
        ax.set(xlabel="λ_orth", ylabel=f"success % at {budgets[-1]} steps", title="Orthogonal regulariser weight",
               ylim=(0, 102))
        save(fig, "orth_sweep.png")

    fig, ax = plt.subplots(figsize=(6.4, 4))
    names = [m for m in methods if methods[m]["cost"]["s_per_step"]]  # no bar for a method without a measurement
    ax.bar(range(len(names)), [methods[m]["cost"]["s_per_step"] for m in names])
    ax.set_xticks(range(len(names)), [methods[m]["label"] for m in names], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="seconds per step", title="Training cost per step")
    save(fig, "cost.png")

    if res["tuners"]:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        tb = str(c["tuner_steps"])
        labels, rows = [], []
        for t in res["tuners"]:
            v = methods[f"tuner-{t}"]
            labels.append(f"{v['label']}\nin dist.")
            rows.append(v["budgets"][tb])
            if v["ood_pooled"]["pc"] is not None:  # a run with perturbations
                labels.append(f"{v['label']}\nOOD")
                rows.append(v["ood_pooled"])
        _bars(ax, labels, rows)
        ax.set(ylabel="success %", title="Tuners from θ_pre", ylim=(0, 102))
        save(fig, "tuners.png")

    if res.get("gse_ablations"):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        rows = res["gse_ablations"]
        _bars(ax, ["VLA-GSE"] + [r["method"].removeprefix("tuner-gse") for r in rows[1:]], [r["success"] for r in rows])
        ax.set(ylabel=f"success % at {c['tuner_steps']} steps", title="VLA-GSE design ablations", ylim=(0, 102))
        save(fig, "gse_ablations.png")
    return written


def _bars(ax: Any, labels: list[str], rows: list[dict[str, Any]]) -> None:
    ys = [r["pc"] for r in rows]
    err = [[r["pc"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["pc"] for r in rows]]
    ax.bar(range(len(rows)), ys, yerr=err, capsize=3)
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=7)


def write_report(res: dict[str, Any], run_dir: Path, videos: list[str]) -> Path:
    plot_all(res, run_dir)
    return atomic_write_text(run_dir / "report.md", render_markdown(res, videos))


def _ranges_line(c: dict[str, Any]) -> str:
    """Which seed ranges the run used, and what that makes its findings."""
    episodes = f"episodes 0–{c['eval_episodes'] - 1} per task and seed"
    if c.get("cap_seed") is not None:
        episodes += f"; the vector from D_cap runs of training seed {c['cap_seed']}"
    if c.get("ranges", "test") == "validation":
        return (f"**Validation ranges (this run)**: training seeds {c['seeds']}, rollout base seed {c['eval_seed']}, "
                f"{episodes}. A validation run is for choosing a setting or checking a test-range result; its "
                "findings are not reported results, which come from a test run on other seeds.")
    return (f"Test ranges (this run): training seeds {c['seeds']}, rollout base seed {c['eval_seed']}, {episodes}. "
            f"Settings were chosen on the validation ranges (training seeds {VALIDATION_TRAIN_SEEDS.start}–"
            f"{VALIDATION_TRAIN_SEEDS.stop - 1}, rollout base seed {VALIDATION_EVAL_SEED}), which a reported run "
            "cannot use.")


def _kernel_warning(res: dict[str, Any]) -> list[str]:
    """A line when the training stages ran on more than one kernel set (a run continued on another CPU)."""
    kernels = res.get("training_kernels") or {}
    if len(set(kernels) - {"unrecorded"}) < 2:  # stages from before the kernel set was kept cannot be told apart
        return []
    tally = ", ".join(f"{k}: {n}" for k, n in sorted(kernels.items()))
    return ["", f"**Mixed machines**: the training stages ran on more than one CPU kernel set ({tally} stages). "
            "Each stage is a valid draw of its recipe, but this run is not bit-reproducible on one machine "
            "(docs/demo.md, Time)."]


def _cpu(machine: dict[str, Any]) -> str:
    """"AMD EPYC (x86_64, AVX2 kernels)"; results written before the CPU was recorded name the architecture only."""
    if not machine.get("cpu"):
        return machine["processor"]
    return f"{machine['cpu']} ({machine['processor']}, {machine.get('cpu_capability')} kernels)"
