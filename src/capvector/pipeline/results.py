"""Collect a demo run's evaluations into `results.json`: per-seed success of every method, the papers' findings
tested with the training seed as the unit (a paired t interval over seeds), Wilson/Newcombe intervals over
episodes as description, and each method's cost."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from capvector.pipeline.recipe import (
    MAIN_METHODS,
    DemoGraph,
    combination_method,
    dcap_method,
    gse_ablation_method,
    method_label,
)
from capvector.pipeline.stages import MARKER
from capvector.pipeline.work import read_eval
from capvector.stats import bootstrap_difference, newcombe_difference, seed_difference, wilson_interval

MIN_SEEDS = 5  # fewer training seeds than this cannot resolve the differences the papers report


def pooled(evals: list[dict[str, Any]], variant: str = "none", seeds: list[int] | None = None) -> dict[str, Any]:
    """Episodes of one variant over evaluations (one per training seed): n, k, %, 95% Wilson interval (a
    description: episodes of one seed are not independent), and `by_seed` (seed → %), the unit of inference."""
    by_seed: dict[str, float] = {}
    n = k = 0
    for i, e in enumerate(evals):
        v = e["per_variant"].get(variant)
        if v is None:
            continue
        n, k = n + v["n_episodes"], k + v["n_success"]
        by_seed[str(seeds[i] if seeds else i)] = v["pc_success"]
    lo, hi = wilson_interval(k, n)
    return {"n": n, "k": k, "pc": 100.0 * k / n if n else None, "ci95": [100 * lo, 100 * hi],
            "per_seed": list(by_seed.values()), "by_seed": by_seed}


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b in percentage points: the seed-level interval (paired t over shared training seeds; the test) and a
    bootstrap over seeds beside it, plus Newcombe's episode-level interval (a description only)."""
    sa = {int(s): v for s, v in a.get("by_seed", {}).items()}
    sb = {int(s): v for s, v in b.get("by_seed", {}).items()}
    seed = seed_difference(sa, sb)
    d, lo, hi = newcombe_difference(a["k"], a["n"], b["k"], b["n"])
    enough = min(len(sa), len(sb)) >= 2
    return {"diff_pp": seed["diff"], "ci95_pp": [float(x) for x in seed["ci"]], "test": seed["method"],
            "seeds": seed["seeds"], "n_seeds": [len(sa), len(sb)],
            "bootstrap_ci95_pp": bootstrap_difference(sa, sb) if enough else None,
            "episode_diff_pp": 100 * d, "episode_ci95_pp": [100 * lo, 100 * hi]}


def against_reference(arm: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """arm − one fixed policy's rate (θ_pre: the same weights for every training seed, rolled out on the same
    episodes): each seed's rate minus the reference, a t interval over the arm's seeds."""
    return difference(arm, dict(reference, by_seed={s: reference["pc"] for s in arm["by_seed"]}))


def verdict(diff: dict[str, Any], claim: str, assessed: bool = True) -> str:
    """How a measured difference stands against a claim: 'greater' (a > b) or 'at_least' (a ≥ b), judged on the
    seed-level interval; runs that cannot support a claim (quick mode, too few seeds) say so."""
    if not assessed:
        return "not assessed (quick mode)"
    if min(diff.get("n_seeds", [0])) < 2:
        return "not assessed (one training seed)"
    lo, hi = diff["ci95_pp"]
    few = f" — only {min(diff['n_seeds'])} seeds" if min(diff["n_seeds"]) < MIN_SEEDS else ""
    if lo > 0:
        return "shown" + few
    if hi < 0:
        return "contradicted" + few
    return ("consistent (no significant difference)" if claim == "at_least" else "not shown (not significant)") + few


class ResultsBuilder:
    def __init__(self, graph: DemoGraph) -> None:
        self.g = graph
        self.cfg = graph.cfg

    def _eval(self, stage: str) -> dict[str, Any]:
        return read_eval(self.g.dir(stage))

    def _marker(self, stage: str) -> dict[str, Any]:
        """A finished stage's record (seconds, summary, ...); {} for a stage that has none."""
        marker = self.g.dir(stage) / MARKER
        return json.loads(marker.read_text()) if marker.is_file() else {}

    def _training_kernels(self) -> dict[str, int]:
        """Kernel set → number of training stages that ran on it (stages recorded before it was kept: "unrecorded").

        The stage cache is keyed by the recipe, not the CPU: a run continued on another machine mixes both."""
        counts: dict[str, int] = {}
        for stage in self.g.stages:
            if stage.params.get("kind") == "train":
                record = self._marker(stage.name)
                if record:
                    kernel = record.get("summary", {}).get("cpu_capability") or "unrecorded"
                    counts[kernel] = counts.get(kernel, 0) + 1
        return counts

    def method(self, method: str) -> dict[str, Any]:
        runs = [r for r in self.g.runs if r.method == method]
        seeds = [r.seed for r in runs]
        budgets: dict[str, Any] = {}
        for b in runs[0].budgets:
            budgets[str(b)] = pooled([self._eval(self.g.evals[(method, r.seed, b)]) for r in runs],
                                     self.g.down_variant, seeds)
        ood_runs = [r for r in runs if (method, r.seed) in self.g.ood_evals]
        perturbed = [self._eval(self.g.ood_evals[(method, r.seed)]) for r in ood_runs]
        ood_seeds = [r.seed for r in ood_runs]
        ood = {v: pooled(perturbed, v, ood_seeds) for v in (perturbed[0]["per_variant"] if perturbed else {})}
        markers = [self._marker(r.stage) for r in runs]
        trains = [m.get("summary", {}) for m in markers]
        rates = [t["samples_per_s"] for t in trains if t.get("samples_per_s")]
        seconds = [m.get("seconds") for m in markers]
        cost = {"samples_per_s": sum(rates) / len(rates) if rates else None,
                "s_per_step": self.cfg.batch_size * len(rates) / sum(rates) if rates else None,
                "train_s_per_run": sum(s for s in seconds if s) / max(1, len(seconds)),
                "steps_per_run": max(runs[0].budgets),
                "trainable_parameters": trains[0].get("trainable_parameters")}
        init = self.g.init_of.get(method)
        start = pooled([self._eval(self.g.init_evals[init])], self.g.down_variant) if init else None
        out = {"label": method_label(method), "seeds": seeds, "start": start, "budgets": budgets,
               "ood": ood, "ood_pooled": _pool_variants(ood), "cost": cost}
        if self.g.forgetting_reference:
            pretrain = pooled([self._eval(self.g.forgetting_evals[(method, s)]) for s in seeds], seeds=seeds)
            out["pretrain"] = pretrain | {"steps": max(runs[0].budgets),
                                          "change": against_reference(pretrain, self._pretrain_reference())}
        return out

    def _pretrain_reference(self) -> dict[str, Any]:
        """θ_pre's success on its own pretraining tasks, on the episodes every fine-tune is rolled out on there."""
        return pooled([self._eval(self.g.forgetting_reference)])

    def build(self, total_s: float | None = None) -> dict[str, Any]:
        c = self.cfg
        methods = {m: self.method(m) for m in dict.fromkeys(r.method for r in self.g.runs)}
        cap = {who: pooled([self._eval(f"eval/cap/{who}")], c.cap_scene or "none")
               for who in ("pretrained", "sft", "aux")}
        final, short = str(c.down_budgets[-1]), str(c.down_budgets[0])
        findings = []

        def finding(key: str, text: str, a: dict, b: dict, claim: str) -> None:
            d = difference(a, b)
            findings.append({"key": key, "claim": text, **d, "a_pc": a["pc"], "b_pc": b["pc"], "n": [a["n"], b["n"]],
                             "verdict": verdict(d, claim, assessed=c.mode != "quick")})

        finding("cap_aux_beats_sft", "aux-SFT beats SFT on D_cap at equal steps (in-domain)", cap["aux"], cap["sft"],
                "greater")
        for b in map(str, c.down_budgets):
            if "aux" in methods:
                finding(f"down_aux_beats_sft@{b}", f"aux-SFT beats SFT on D_down at {b} steps",
                        methods["aux"]["budgets"][b], methods["sft"]["budgets"][b], "greater")
            finding(f"capvector_beats_sft@{b}", f"CapVector beats SFT from θ_pre at {b} steps",
                    methods["capvector"]["budgets"][b], methods["sft"]["budgets"][b], "greater")
            if "aux" in methods:
                finding(f"capvector_matches_aux@{b}", f"CapVector matches or beats aux-SFT at {b} steps",
                        methods["capvector"]["budgets"][b], methods["aux"]["budgets"][b], "at_least")
        if "capvector_no_orth" in methods:
            # CapVector's Finding 2: L_orth matters with training length, so the comparison at every budget shows
            # where it starts to (the claim itself is the one at the longest budget)
            for b in map(str, c.down_budgets):
                longest = " (the longest budget)" if b == final else ""
                finding(f"orth_keeps_gain@{b}", f"L_orth keeps CapVector's gain at {b} steps{longest}",
                        methods["capvector"]["budgets"][b], methods["capvector_no_orth"]["budgets"][b], "greater")
        for m in (m for m in methods if m.startswith("capvector@orth=")):  # the paper's best is 1e-4
            finding(f"orth_main_beats_{m.split('=')[1]}@{final}", f"λ_orth = {c.orth_weight:g} beats λ_orth = "
                    f"{m.split('=')[1]} at {final} steps", methods["capvector"]["budgets"][final],
                    methods[m]["budgets"][final], "greater")
        for teacher, combine in ((t, m) for t in c.combine_teachers for m in c.combine_methods):
            both = methods[combination_method(c.teacher, teacher, combine=combine)]
            alone = methods[combination_method(teacher)]
            how = "" if combine == "sum" else f" ({combine})"
            for b in map(str, c.down_budgets):
                for key, other, text in (("main", methods["capvector"], f"τ_{c.teacher} alone"),
                                         ("other", alone, f"τ_{teacher} alone"), ("sft", methods["sft"], "SFT")):
                    finding(f"combined_{teacher}{how.strip()}_beats_{key}@{b}", f"CapVector from τ_{c.teacher} + "
                            f"τ_{teacher}{how} beats {text} at {b} steps", both["budgets"][b], other["budgets"][b],
                            "greater")
        main_dcap = f"the {c.cap_scene} D_cap" if c.cap_scene else "the clean D_cap"
        for scene in c.cap_scene_sweep:
            other = methods[dcap_method(scene)]
            for b in map(str, c.down_budgets):
                finding(f"dcap_{scene}_beats_main@{b}", f"CapVector with τ from D_cap in {scene} beats τ from "
                        f"{main_dcap} at {b} steps", other["budgets"][b], methods["capvector"]["budgets"][b], "greater")
                finding(f"dcap_{scene}_beats_sft@{b}", f"CapVector with τ from D_cap in {scene} beats SFT at {b} "
                        "steps", other["budgets"][b], methods["sft"]["budgets"][b], "greater")
            if c.ood_perturbations:
                finding(f"dcap_{scene}_beats_main_ood", f"CapVector with τ from D_cap in {scene} beats τ from "
                        f"{main_dcap} under the OOD perturbations (pooled)", other["ood_pooled"],
                        methods["capvector"]["ood_pooled"], "greater")
        if c.ood_perturbations:
            finding("capvector_ood_beats_sft", "CapVector beats SFT under the OOD perturbations (pooled)",
                    methods["capvector"]["ood_pooled"], methods["sft"]["ood_pooled"], "greater")
        tuners = {t: methods[f"tuner-{t}"] for t in c.tuners}  # the gse_sweep rows have a section of their own
        tb = str(c.tuner_steps)
        for other, label in (("lora", "LoRA"), ("full", "full fine-tuning")):
            if "gse" in tuners and other in tuners:
                finding(f"gse_beats_{other}", f"VLA-GSE beats {label} in distribution", tuners["gse"]["budgets"][tb],
                        tuners[other]["budgets"][tb], "greater")
                if c.ood_perturbations:
                    finding(f"gse_beats_{other}_ood", f"VLA-GSE beats {label} out of distribution (pooled "
                            "perturbations)", tuners["gse"]["ood_pooled"], tuners[other]["ood_pooled"], "greater")
        if c.gse_sweep and c.gse_options.get("init_type", "svd") == "svd":
            # VLA-GSE's Table 3: principal-component init beats random (LoRA-style) and minor-component init
            for init, text in (("lora", "random LoRA-style init (no SVD)"), ("mgse", "minor-component (MGSE) init")):
                if {"init_type": init} in c.gse_sweep:
                    finding(f"gse_svd_init_beats_{init}_init", f"VLA-GSE's principal-component (SVD) init beats "
                            f"{text} in distribution", tuners["gse"]["budgets"][tb],
                            methods[gse_ablation_method({"init_type": init})]["budgets"][tb], "greater")
        if c.forgetting:
            # VLA-GSE: full fine-tuning forgets, PEFT preserves, GSE preserves like LoRA; CapVector against SFT
            for key, a, b, text, claim in (
                    ("gse_forgets_less_than_full", "gse", "full", "VLA-GSE keeps more pretraining-task success than "
                     "full fine-tuning", "greater"),
                    ("lora_forgets_less_than_full", "lora", "full", "LoRA keeps more pretraining-task success than "
                     "full fine-tuning", "greater"),
                    ("gse_forgets_like_lora", "gse", "lora", "VLA-GSE keeps at least LoRA's pretraining-task success",
                     "at_least")):
                if a in tuners and b in tuners:
                    finding(key, text, tuners[a]["pretrain"], tuners[b]["pretrain"], claim)
            finding("capvector_forgets_like_sft", f"CapVector keeps at least SFT's pretraining-task success "
                    f"({final} steps)", methods["capvector"]["pretrain"], methods["sft"]["pretrain"], "at_least")
        # CapVector's one-time cost, paid once per vector and shared by every downstream fine-tune
        extraction_s = {role: self._marker(stage).get("seconds") for role, stage in self.g.extraction.items()}
        sft_cost = methods["sft"]["cost"]["s_per_step"]
        cost_ratio = {m: (v["cost"]["s_per_step"] / sft_cost if sft_cost and v["cost"]["s_per_step"] else None)
                      for m, v in methods.items()}
        merge_choices = [{"variant": "main", "weight": c.vector_weight, "preset": c.vector_preset,
                          **methods["capvector"]["budgets"][short]}]
        for m, v in methods.items():
            if m.startswith("capvector@weight="):
                merge_choices.append({"variant": m, "weight": float(m.split("=")[1]), "preset": c.vector_preset,
                                      **v["budgets"][short]})
            elif m.startswith("capvector@") and "orth=" not in m:
                merge_choices.append({"variant": m, "weight": c.vector_weight, "preset": m.split("@", 1)[1],
                                      **v["budgets"][short]})
        orth_sweep = [{"orth_weight": c.orth_weight, **methods["capvector"]["budgets"][final]}]
        if "capvector_no_orth" in methods:
            orth_sweep.append({"orth_weight": 0.0, **methods["capvector_no_orth"]["budgets"][final]})
        orth_sweep += [{"orth_weight": float(m.split("=")[1]), **v["budgets"][final]}
                       for m, v in methods.items() if m.startswith("capvector@orth=")]
        return {
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "total_s": total_s,
            "training_kernels": self._training_kernels(),
            "config": c.to_dict(), "cap": cap, "vector": self._marker(self.g.extraction["extract"]).get("summary", {}),
            "methods": methods, "main_methods": list(MAIN_METHODS), "findings": findings,
            "cost_ratio_vs_sft": cost_ratio, "extraction_s": extraction_s, "merge_choices": merge_choices,
            "orth_sweep": sorted(orth_sweep, key=lambda r: r["orth_weight"]),
            "tuners": list(tuners),
            "pretrain_reference": self._pretrain_reference() if c.forgetting else None,
            "dcap_scenes": self._dcap_scenes(methods) if c.cap_scene_sweep else [],
            "gse_ablations": self._gse_ablations(methods) if c.gse_sweep else [],
        }

    def _gse_ablations(self, methods: dict[str, Any]) -> list[dict[str, Any]]:
        """VLA-GSE's Table 3 in miniature: the GSE arm, then each gse_sweep row with its success at tuner_steps (in
        distribution, OOD pooled when run), trainable parameters as its training run recorded them, and row − GSE
        paired by seed (descriptive; the init rows also stand as findings)."""
        c = self.cfg
        tb = str(c.tuner_steps)
        base = methods["tuner-gse"]

        def row(method: str, options: dict[str, Any]) -> dict[str, Any]:
            v = methods[method]
            ood = v["ood_pooled"] if c.ood_perturbations else None
            return {"method": method, "options": options, "trainable_parameters": v["cost"]["trainable_parameters"],
                    "success": v["budgets"][tb], "ood_pooled": ood,
                    "vs_gse": None if v is base else difference(v["budgets"][tb], base["budgets"][tb]),
                    "vs_gse_ood": None if v is base or ood is None else difference(ood, base["ood_pooled"])}

        return [row("tuner-gse", {"r": c.gse_r, **c.gse_options}),
                *(row(gse_ablation_method(r), dict(r)) for r in c.gse_sweep)]

    def _dcap_scenes(self, methods: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per D_cap scene: the main vector's, then each of cap_scene_sweep's: its vector and CapVector."""
        rows = [("capvector", self.cfg.cap_scene or "none", self.g.extraction["extract"])]
        rows += [(dcap_method(s), s, stage) for s, stage in self.g.dcap_vectors.items()]
        return [{"scene": scene, "method": m, "vector": self._marker(stage).get("summary", {}),
                 "budgets": methods[m]["budgets"], "ood_pooled": methods[m]["ood_pooled"]} for m, scene, stage in rows]


def _pool_variants(ood: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """All perturbations together: episodes summed, and per seed the mean over perturbations."""
    n = sum(v["n"] for v in ood.values())
    k = sum(v["k"] for v in ood.values())
    lo, hi = wilson_interval(k, n)
    seeds = sorted({s for v in ood.values() for s in v.get("by_seed", {})}, key=int)
    by_seed = {s: sum(v["by_seed"][s] for v in ood.values() if s in v["by_seed"]) /
               sum(1 for v in ood.values() if s in v["by_seed"]) for s in seeds}
    return {"n": n, "k": k, "pc": 100.0 * k / n if n else None, "ci95": [100 * lo, 100 * hi],
            "per_seed": list(by_seed.values()), "by_seed": by_seed}


def machine() -> dict[str, Any]:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def cpu_model() -> str | None:
    """The CPU's model name (Linux), which `platform` does not give: runs on two CPUs are not bit-comparable."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def write_results(results: dict[str, Any], path: Path) -> None:
    from capvector.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
