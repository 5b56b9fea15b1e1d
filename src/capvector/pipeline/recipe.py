"""The CapVector demo as a graph of cached stages (see docs/demo.md for what each experiment answers).

θ_pre (shipped) ─► SFT and aux-SFT on D_cap ─► τ_cap = θ_aux − θ_sft ─► θ_meta = θ_pre + λ·τ_cap
                                                                               │
D_down demos ─► downstream fine-tunes per method and seed ─► rollouts at each budget (+ OOD variants)

Methods (downstream, on D_down): `sft` (SFT from θ_pre), `aux` (SFT + the auxiliary objective from θ_pre),
`capvector` (SFT from θ_meta + L_orth), `capvector_no_orth` (SFT from θ_meta); plus the merge-choice and
λ_orth variants of `capvector`, CapVector from vectors of other objectives or of D_cap recorded in other scenes,
and LoRA / GSE tuners from θ_pre beside full fine-tuning (= `sft`), with GSE design-ablation rows. D_down and its
rollouts may live in a fixed novel scene; with `forgetting`, every fine-tune is also rolled out on the pretraining
tasks.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError
from capvector.pipeline.config import DEFAULT_TEACHER, PipelineConfig, combine_spec, gse_row_name
from capvector.pipeline.stages import Stage
from capvector.pipeline.work import DATASET, Collect, Evaluate, Extract, Merge, Train, TrainSettings
from capvector.policy import read_policy_config, type_of
from capvector.train import OrthSettings, snapshot_dir

MAIN_METHODS = ("sft", "aux", "capvector", "capvector_no_orth")
METHOD_LABELS = {
    "sft": "SFT from θ_pre",
    "aux": "aux-SFT from θ_pre (SFT + the auxiliary objective)",
    "capvector": "CapVector: SFT from θ_meta + L_orth",
    "capvector_no_orth": "CapVector without L_orth",
    "tuner-full": "full fine-tuning",
    "tuner-lora": "LoRA",
    "tuner-gse": "VLA-GSE",
}


def method_label(method: str) -> str:
    """What the report and progress lines call a method; the swept variants' names are built below."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    if method.startswith("capvector@orth="):
        return f"CapVector, λ_orth = {method.split('=', 1)[1]}"
    if method.startswith("capvector@weight="):
        return f"CapVector, λ = {method.split('=', 1)[1]}"
    if method.startswith("capvector[dcap="):
        return f"CapVector, τ from D_cap in {method.removeprefix('capvector[dcap=').removesuffix(']')}"
    if method.startswith("capvector["):
        teachers, _, combine = method.removeprefix("capvector[").removesuffix("]").partition("|")
        how = f" ({combine})" if combine else ""
        return "CapVector from " + " + ".join(f"τ_{t}" for t in teachers.split("+")) + how
    if method.startswith("capvector@"):
        return f"CapVector, selection {method.split('@', 1)[1]}"
    if method.startswith("tuner-gse["):
        return f"VLA-GSE, {method.removeprefix('tuner-gse[').removesuffix(']')}"
    return method


def combination_method(*teachers: str, combine: str = "sum") -> str:
    """The downstream method that starts from θ_pre plus the vectors of these objectives (the combination study),
    merged by `combine` (a `PipelineConfig.combine_methods` entry)."""
    return f"capvector[{'+'.join(teachers)}{'' if combine == 'sum' else '|' + combine}]"


def gse_ablation_method(row: dict[str, Any]) -> str:
    """The tuner arm of one `gse_sweep` row: the GSE arm with the row's options, e.g. `tuner-gse[init_type=mgse]`."""
    return f"tuner-gse[{gse_row_name(row)}]"


def dcap_method(scene: str) -> str:
    """The downstream method that starts from θ_pre plus the vector extracted on D_cap recorded in `scene`."""
    return f"capvector[dcap={scene}]"


@dataclass(frozen=True)
class Run:
    """One downstream fine-tune: which method it is, its seed, the stage that trains it, its evaluated budgets."""

    method: str
    seed: int
    stage: str
    budgets: tuple[int, ...]


class DemoGraph:
    """Builds the stage list for a config; `runs` lists every downstream fine-tune for the report."""

    def __init__(self, cfg: PipelineConfig, root: Path) -> None:
        self.cfg, self.root = cfg, root
        self.stages: list[Stage] = []
        self.runs: list[Run] = []
        self.evals: dict[tuple[str, int, int], str] = {}  # (method, seed, budget) → eval stage
        self.ood_evals: dict[tuple[str, int], str] = {}  # (method, seed) → perturbed eval at the final budget
        self.forgetting_evals: dict[tuple[str, int], str] = {}  # (method, seed) → pretraining-task eval, final budget
        self.forgetting_reference: str | None = None  # θ_pre's own pretraining-task eval
        self.dcap_vectors: dict[str, str] = {}  # cap_scene_sweep scene → its vector stage
        # the variant name D_down's in-distribution rollouts are recorded under in eval.json
        self.down_variant = cfg.down_scene or "none"
        self._build()

    # ---- helpers ------------------------------------------------------------------------------
    def dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def _add(self, name: str, work: Any, deps: tuple[str, ...] = (), resumable: bool = False,
             label: str = "") -> str:
        self.stages.append(Stage(name, work, work.params(), deps, resumable, label, getattr(work, "cores", 1)))
        return name

    def _policy(self, stage: str) -> str:
        return str(self.dir(stage) / "policy")

    def _data(self, stage: str) -> str:
        return str(self.dir(stage) / DATASET)

    def _train_settings(self, steps: int, seed: int, lr: float, **extra: Any) -> TrainSettings:
        c = self.cfg
        return TrainSettings.of(steps=steps, batch_size=c.batch_size, lr=lr, seed=seed, threads=c.threads,
                                log_every=25, checkpoint_every=max(50, steps // 4), **extra)

    def _eval(self, policy: str, split: str, deps: tuple[str, ...], name: str, perturbations: tuple[str, ...] = (),
              videos: int = 0, scene: str | None = None, episodes: int | None = None) -> str:
        """Rollouts in the split's own `scene` (clean when None; `eval_episodes` per task) or under `perturbations`
        (`ood_episodes` per task each)."""
        c = self.cfg
        episodes = episodes or (c.ood_episodes if perturbations else c.eval_episodes)
        work = Evaluate(policy, split, episodes, c.eval_seed, c.max_steps, perturbations or (scene or "none",),
                        c.workers, videos)
        return self._add(name, work, deps, label=f"rollouts {name.removeprefix('eval/')}")

    def _down_eval(self, policy: str, deps: tuple[str, ...], name: str, videos: int = 0) -> str:
        """In-distribution rollouts on D_down: its tasks, in its scene."""
        return self._eval(policy, self.cfg.split_spec("down"), deps, name, videos=videos, scene=self.cfg.down_scene)

    # ---- the graph ----------------------------------------------------------------------------
    def _build(self) -> None:
        c = self.cfg
        pretrained = resolve_pretrained(c.pretrained, c.policy)
        pre = self._add("pretrained", CopyPolicy(pretrained), label="pretrained policy θ_pre")
        self.image_size = read_policy_config(pretrained).image_size  # demos are rendered at θ_pre's resolution
        cap_data, cap_runs = self._capability(pre, c.cap_scene)
        down_data = self._add("data/down", Collect(c.split_spec("down"), c.down_episodes, c.collect_seed_down,
                                                   c.noise, self.image_size, scene=c.down_scene),
                              resumable=True, label="collect D_down demos")
        for who, stage in (("pretrained", pre), ("sft", cap_runs["sft"]), ("aux", cap_runs["aux"])):
            self._eval(self._policy(stage), c.split_spec("cap"), (stage,), f"eval/cap/{who}", scene=c.cap_scene)
        if c.forgetting:
            self.forgetting_reference = self._eval(self._policy(pre), c.split_spec("pretrain"), (pre,),
                                                   "eval/pretrain/pretrained", episodes=c.forgetting_episodes)
        vectors = {c.vector_preset: self._vector(c.vector_preset, pre, cap_runs)}
        meta = self._meta(pre, (vectors[c.vector_preset],), c.vector_weight, "meta/main")
        # CapVector's one-time work, before any downstream fine-tune: role → stage
        self.extraction = {**cap_runs, "extract": vectors[c.vector_preset], "merge": meta}
        # Step 0 of the downstream curves: each starting point on D_down before any downstream training.
        self.init_evals = {init: self._down_eval(self._policy(init), (init,), f"eval/down/{who}")
                           for init, who in ((pre, "pretrained"), (meta, "meta"))}
        self.init_of: dict[str, str] = {}  # method → its starting stage

        down_kwargs = dict(pre=pre, data=down_data)
        methods: dict[str, dict[str, Any]] = {"sft": dict(init=pre)}
        if c.aux_arm:
            methods["aux"] = dict(init=pre, aux=True)
        methods["capvector"] = dict(init=meta, orth=(vectors[c.vector_preset], c.orth_weight))
        if c.orth_control:
            methods["capvector_no_orth"] = dict(init=meta)
        for w in c.orth_sweep:
            methods[f"capvector@orth={w:g}"] = dict(init=meta, orth=(vectors[c.vector_preset], w))
        for method, spec in methods.items():
            self.init_of[method] = spec["init"]
            for seed in c.seeds:
                self._downstream(method, seed, c.down_budgets, **down_kwargs, **spec)

        # Merge choices, compared at the first budget with the main CapVector run's snapshot there.
        short = (c.down_budgets[0],)
        for w in c.weight_sweep:
            m = self._meta(pre, (vectors[c.vector_preset],), w, f"meta/weight={w:g}")
            for seed in c.seeds:
                self._downstream(f"capvector@weight={w:g}", seed, short, init=m, ood=False,
                                 orth=(vectors[c.vector_preset], c.orth_weight), **down_kwargs)
        for preset in c.preset_sweep:
            vectors[preset] = self._vector(preset, pre, cap_runs)
            m = self._meta(pre, (vectors[preset],), c.vector_weight, f"meta/{slug(preset)}")
            for seed in c.seeds:
                self._downstream(f"capvector@{slug(preset)}", seed, short, init=m, ood=False,
                                 orth=(vectors[preset], c.orth_weight), **down_kwargs)

        for teacher in c.combine_teachers:
            self._combination(teacher, pre, cap_data, cap_runs, vectors[c.vector_preset], down_kwargs)
        for scene in c.cap_scene_sweep:
            self._dcap_scene(scene, pre, down_kwargs)

        # Tuners from θ_pre; full fine-tuning (at down_lr) is the `sft` method when the budgets agree.
        for tuner in c.tuners:
            for seed in c.seeds:
                if tuner == "full" and c.tuner_steps == c.down_steps:
                    sft = next(r for r in self.runs if r.method == "sft" and r.seed == seed)
                    self.runs.append(Run("tuner-full", seed, sft.stage, (c.down_steps,)))
                    self.evals[("tuner-full", seed, c.down_steps)] = self.evals[("sft", seed, c.down_steps)]
                    for evals in (self.ood_evals, self.forgetting_evals):
                        if ("sft", seed) in evals:
                            evals[("tuner-full", seed)] = evals[("sft", seed)]
                    continue
                self._downstream(f"tuner-{tuner}", seed, (c.tuner_steps,), init=pre, tuner=tuner, **down_kwargs)
        # VLA-GSE's design ablations: the GSE arm again, with one row's options on top of its own
        for row in c.gse_sweep:
            for seed in c.seeds:
                self._downstream(gse_ablation_method(row), seed, (c.tuner_steps,), init=pre, tuner="gse", gse_row=row,
                                 **down_kwargs)

    def _capability(self, pre: str, scene: str | None, suffix: str = "") -> tuple[str, dict[str, str]]:
        """D_cap recorded in `scene`, then SFT and aux-SFT on it: identical runs but for the auxiliary loss (same
        data, order, seed, steps). Returns the data stage and {"sft": stage, "aux": stage}."""
        c = self.cfg
        where = f" in {scene}" if suffix else ""
        data = self._add(f"data/cap{suffix}", Collect(c.split_spec("cap"), c.cap_episodes, c.collect_seed_cap,
                                                      c.noise, self.image_size, scene=scene),
                         resumable=True, label=f"collect D_cap demos{where}")
        runs = {"sft": self._cap_run(f"cap/sft{suffix}", pre, data, DEFAULT_TEACHER, aux=False,
                                     label=f"θ_sft: sft on D_cap{where}"),
                "aux": self._cap_run(f"cap/aux{suffix}", pre, data, c.teacher, aux=True,
                                     label=f"θ_aux: aux on D_cap{where}")}
        return data, runs

    def _cap_run(self, name: str, pre: str, data: str, teacher: str, *, aux: bool, label: str) -> str:
        """One extraction run on D_cap from θ_pre: the same steps, seed and order for every run, so SFT and each
        aux-SFT differ only in the auxiliary loss (and, for aux-SFT, its teacher)."""
        c = self.cfg
        seed = c.seeds[0] if c.cap_seed is None else c.cap_seed
        settings = self._train_settings(c.cap_steps, seed, c.cap_lr, aux_weight=c.aux_weight if aux else 0.0,
                                        aux_layer=c.aux_layer, teacher=teacher)
        return self._add(name, Train(self._policy(pre), self._data(data), settings), (pre, data), resumable=True,
                         label=label)

    def _dcap_scene(self, scene: str, pre: str, down_kwargs: dict[str, str]) -> None:
        """Vector quality (CapVector's Finding 5): the same extraction on D_cap recorded in `scene` (same tasks,
        layouts, seeds and steps), its vector and θ_meta, and CapVector from it at every budget, in and out of
        distribution, beside the main vector's."""
        c = self.cfg
        suffix = f"@{slug(scene)}"
        _, runs = self._capability(pre, None if scene == "none" else scene, suffix)
        vector = self.dcap_vectors[scene] = self._vector(c.vector_preset, pre, runs, f"vector/dcap{suffix}")
        meta = self._meta(pre, (vector,), c.vector_weight, f"meta/dcap{suffix}")
        method = dcap_method(scene)
        self.init_of[method] = meta
        self.init_evals[meta] = self._down_eval(self._policy(meta), (meta,), f"eval/down/meta-dcap{suffix}")
        for seed in c.seeds:
            self._downstream(method, seed, c.down_budgets, init=meta, orth=(vector, c.orth_weight), **down_kwargs)

    def _vector(self, preset: str, pre: str, cap_runs: dict[str, str], name: str | None = None) -> str:
        work = Extract(self._policy(cap_runs["sft"]), self._policy(cap_runs["aux"]), self._policy(pre), preset)
        return self._add(name or f"vector/{slug(preset)}", work, (pre, cap_runs["sft"], cap_runs["aux"]),
                         label=f"extract τ_cap ({preset}{'' if name is None else ', ' + name})")

    def _meta(self, pre: str, vectors: tuple[str, ...], weight: float, name: str, combine: str = "sum") -> str:
        method, density = combine_spec(combine)
        work = Merge(self._policy(pre), tuple(str(self.dir(v) / "vector") for v in vectors), (weight,) * len(vectors),
                     method, density)
        terms = " + ".join(f"{weight:g}·τ" + (f"_{i + 1}" if len(vectors) > 1 else "_cap") for i in range(len(vectors)))
        how = "" if method == "sum" else f" ({combine})"
        return self._add(name, work, (pre, *vectors), label=f"merge θ_meta = θ_pre + {terms}{how}")

    def _combination(self, teacher: str, pre: str, cap_data: str, cap_runs: dict[str, str], main: str,
                     down_kwargs: dict[str, str]) -> None:
        """Vectors that combine (CapVector's Finding 4): aux-SFT on D_cap with another objective, its vector, and
        CapVector from θ_pre + λ·τ_that and from θ_pre + λ·(τ_main + τ_that), each with L_orth to its own shift."""
        c = self.cfg
        aux = self._cap_run(f"cap/aux-{teacher}", pre, cap_data, teacher, aux=True,
                            label=f"θ_aux with {teacher} on D_cap")
        vector = self._vector(c.vector_preset, pre, {"sft": cap_runs["sft"], "aux": aux}, f"vector/{teacher}")
        alone = self._meta(pre, (vector,), c.vector_weight, f"meta/{teacher}")
        arms = [(combination_method(teacher), alone, vector)]
        for combine in c.combine_methods:
            pair = f"{c.teacher}+{teacher}" + ("" if combine == "sum" else f"|{combine}")
            both = self._meta(pre, (main, vector), c.vector_weight, f"meta/{pair}", combine)
            shift = self._add(f"vector/{pair}",
                              Extract(self._policy(pre), self._policy(both), self._policy(pre), c.vector_preset),
                              (pre, both), label=f"θ_meta − θ_pre of the combined merge ({pair})")
            arms.append((combination_method(c.teacher, teacher, combine=combine), both, shift))
        for method, init, orth in arms:
            for seed in c.seeds:
                self._downstream(method, seed, c.down_budgets, init=init, ood=False, orth=(orth, c.orth_weight),
                                 **down_kwargs)

    def _downstream(self, method: str, seed: int, budgets: tuple[int, ...], *, init: str, pre: str, data: str,
                    aux: bool = False, orth: tuple[str, float] | None = None, tuner: str = "full",
                    ood: bool = True, gse_row: dict[str, Any] | None = None) -> None:
        """One fine-tune on D_down and its rollouts; `gse_row` (tuner "gse") overrides the GSE arm's options."""
        c = self.cfg
        steps = budgets[-1]
        lr = c.down_lr if tuner == "full" else c.tuner_lr
        extra: dict[str, Any] = {"aux_weight": c.aux_weight if aux else 0.0, "aux_layer": c.aux_layer,
                                 "teacher": c.teacher if aux else DEFAULT_TEACHER,
                                 "snapshot_steps": list(budgets[:-1]), "tuner": tuner}
        if tuner != "full":
            extra |= {"also_train": ["action_expert.*"], "lora_r": c.lora_r, "lora_alpha": c.lora_r}
        if tuner == "gse":
            extra["gse_options"] = {"r": c.gse_r, **c.gse_options, **(gse_row or {})}
        deps = (init, data)
        orth_settings = None
        if orth is not None:
            orth_settings = OrthSettings(str(self.dir(orth[0]) / "vector"), orth[1], c.orth_mode, c.orth_rank)
            deps = (*deps, orth[0])
        name = f"down/{method}/seed{seed}"
        work = Train(self._policy(init), self._data(data), self._train_settings(steps, seed, lr, **extra),
                     orth_settings)
        self._add(name, work, deps, resumable=True, label=f"{method_label(method)}, seed {seed}")
        self.runs.append(Run(method, seed, name, budgets))
        videos = c.videos if seed == c.seeds[0] and method in ("sft", "capvector") else 0
        for b in budgets:
            final = b == steps
            policy = str(self.dir(name)) if final else str(snapshot_dir(self.dir(name), b))
            self.evals[(method, seed, b)] = self._down_eval(policy, (name,), f"eval/{name}/step{b}",
                                                            videos=videos if final else 0)
        if ood and c.ood_perturbations:
            self.ood_evals[(method, seed)] = self._eval(str(self.dir(name)), c.split_spec("down"), (name,),
                                                        f"eval/{name}/ood",
                                                        c.ood_perturbations, videos)
        if c.forgetting:
            self.forgetting_evals[(method, seed)] = self._eval(str(self.dir(name)), c.split_spec("pretrain"), (name,),
                                                               f"eval/{name}/pretrain",
                                                               episodes=c.forgetting_episodes)


@dataclass(frozen=True)
class CopyPolicy:
    """Copy θ_pre into the run, so the run is self-contained and fingerprinted by the weights' content."""

    source: Path

    def params(self) -> dict[str, Any]:
        digest = hashlib.sha256((self.source / "model.safetensors").read_bytes()).hexdigest()
        return {"kind": "pretrained", "weights_sha256": digest,
                "config": (self.source / "config.json").read_text()}

    def __call__(self, directory: Path) -> dict[str, Any]:
        from capvector.policy import count_parameters, load_policy

        shutil.copytree(self.source, directory / "policy", ignore=shutil.ignore_patterns("README.md"))
        model = load_policy(directory / "policy")  # validates the copy
        return {"source": str(self.source), "parameters": count_parameters(model)}


def resolve_pretrained(path: str | None, policy: str = "tiny-vla") -> Path:
    """The user's policy directory (checked to be a `policy`), or that policy's weights shipped in the package."""
    if path is None:
        from capvector.assets import pretrained_policy_dir

        return pretrained_policy_dir(policy)
    p = Path(path)
    if not ((p / "model.safetensors").is_file() and (p / "config.json").is_file()):
        raise CapvectorError(f"pretrained policy {p}: expected a directory with config.json and model.safetensors")
    found = type_of(read_policy_config(p)).name
    if found != policy:
        raise CapvectorError(f"pretrained policy {p}: its config.json says policy_type {found!r} but the pipeline "
                             f"config's policy is {policy!r}; set \"policy\": \"{found}\"")
    return p


def slug(text: str) -> str:
    return text.replace(":", "-").replace("+", "_plus_").replace("/", "-")
