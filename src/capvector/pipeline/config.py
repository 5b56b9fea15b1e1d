"""The demo recipe's settings: one dataclass, three named modes (quick / default / extended), JSON overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from capvector.errors import CapvectorError, reject_unknown_keys
from capvector.io.jsonfile import read_json_object

MODES = ("quick", "default", "extended")
# The GSEConfig fields a gse_sweep row may change: the adapter's design, never its total rank or the modules it
# adapts (the rows of VLA-GSE's Table 3 have equal trainable parameters but for the router's E − G rows).
GSE_SWEEP_FIELDS = ("num_experts", "num_generalized_experts", "top_k", "dropout", "dropout_mask", "init_type", "eta",
                    "rho", "init_coefficient", "aux_loss_weight", "scaling", "scaling_base", "svd_niter", "svd_seed")
# Choose on validation, report on test: settings picked by looking at rollouts (teacher, α, layer, λ, budgets, task
# sets) are picked with these training seeds and this rollout base seed (benchmarks/aux_rollouts.py defaults); a
# demo run, whose numbers are reported, must use neither.
VALIDATION_TRAIN_SEEDS = range(100, 200)
VALIDATION_EVAL_SEED = 3000
TASK_ROLES = ("pretrain", "cap", "down")
# The objective chosen on the validation ranges. Arms without the auxiliary loss are fingerprinted with it
# whatever `teacher` says (the teacher plays no part in them), so runs that differ only in the objective share
# their SFT stages.
DEFAULT_TEACHER = "foundation"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines a demo run. Stages are fingerprinted from the fields they read.

    Budgets are in optimiser steps at `batch_size`; `down_budgets` lists the downstream budgets at which
    every method is evaluated (the last is the length of the runs, the others are snapshots of them).
    """

    mode: str = "default"
    policy: str = "tiny-vla"  # the architecture: "tiny-vla" (OFT-style) or "tiny-pi0" (VLM + flow-matching expert)
    pretrained: str | None = None  # a `policy` directory; None = that policy's weights shipped with capvector
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # ≥ 5: the training seed is the unit of every test
    # the training seed of the D_cap runs (θ_sft, θ_aux), so of the vector; None = the first of `seeds`. A run on new
    # downstream seeds that names an earlier run's cap_seed tests that run's vector (and reuses its cached stages)
    cap_seed: int | None = None
    # task splits: None = the named split of `capvector.sim.tasks.SPLITS`; a list of MetaWorld v3 task names
    pretrain_tasks: tuple[str, ...] | None = None  # what θ_pre was trained on (checked disjoint from the others)
    cap_tasks: tuple[str, ...] | None = None  # D_cap
    down_tasks: tuple[str, ...] | None = None  # D_down
    # data
    noise: float = 0.1
    cap_episodes: int = 10  # per D_cap task
    down_episodes: int = 10  # per D_down task
    collect_seed_cap: int = 100
    collect_seed_down: int = 200
    # capability extraction (SFT and aux-SFT on D_cap, same data, order, seed and steps)
    cap_steps: int = 800
    cap_lr: float = 3e-4
    aux_weight: float = 0.5
    aux_layer: int | None = None
    # The objective chosen on the validation ranges (docs/policy.md §5, E5/E8/E9: the frozen scene teacher had the
    # best aux − SFT at the short budget); "geometry" (0.1's default), "geometry-residual", "subgoal" stay options;
    # "latent-reasoning" is the second objective family that applies to both policies (docs/policy.md §3).
    teacher: str = DEFAULT_TEACHER
    # merge
    vector_weight: float = 1.0
    # selections: "family:group", or a bare group of `policy` ("vlm+expert" → "tiny-vla:vlm+expert"), qualified
    # when the config is built so pipeline.json and the stages name the full preset
    vector_preset: str = "vlm+expert"
    # The default demo answers the CapVector question within 45 minutes on 2 cores; the studies beside it (merge
    # choices, the L_orth control and sweep, the tuner comparison) are `--extended` (docs/demo.md, Time).
    weight_sweep: tuple[float, ...] = ()  # extra λ values for the merge-choice experiment
    preset_sweep: tuple[str, ...] = ()  # extra selections for the merge-choice experiment
    # Vectors that combine (CapVector's Finding 4): for each teacher here, a second vector from aux-SFT with that
    # objective, and CapVector from it alone and from it added to the main vector (docs/demo.md)
    combine_teachers: tuple[str, ...] = ()
    # how the combined vectors are merged, one CapVector arm each: "sum", or "ties:0.2", "dare:0.5", "dare-ties:0.5"
    # (`capvector merge --combine METHOD --density D`)
    combine_methods: tuple[str, ...] = ("sum",)
    # downstream
    down_budgets: tuple[int, ...] = (150, 400)
    down_lr: float = 3e-4
    batch_size: int = 32
    orth_weight: float = 1e-4
    orth_mode: str = "factored"
    orth_rank: int = 16
    orth_control: bool = False  # also run CapVector without L_orth (the control of the L_orth claims)
    orth_sweep: tuple[float, ...] = ()  # extra λ_orth values
    # the downstream aux-SFT arm (the reference CapVector should match, ~2× SFT's cost per step); a study that
    # compares only CapVector variants with SFT (the long λ_orth study, configs/orth_long.json) may drop it
    aux_arm: bool = True
    # VLA-GSE vs LoRA vs full fine-tuning, from θ_pre on D_down
    tuner_steps: int = 400
    tuners: tuple[str, ...] = ()  # any of "full", "lora", "gse"
    lora_r: int = 16
    gse_r: int = 16
    # further GSEConfig fields of the GSE arm, e.g. {"init_type": "mgse", "dropout_mask": "per_expert"} for an
    # ablation row (docs/gse.md); empty keeps the arm's stages (and their cache) as before
    gse_options: dict[str, Any] = field(default_factory=dict)
    # VLA-GSE's design ablations (its Table 3): each row a JSON object of GSE design fields (GSE_SWEEP_FIELDS), one
    # more tuner arm `tuner-gse[field=value,…]` from θ_pre with {**gse_options, **row}, beside the GSE arm
    gse_sweep: tuple[dict[str, Any], ...] = ()
    tuner_lr: float = 1e-3  # adapters want a larger step than full fine-tuning
    # Scenes (capvector.sim.perturb.Scene specs, docs/simulator.md); "none" or null = the clean scene. The studies
    # of issue 16 (docs/demo.md, configs/):
    # a novel environment (CapVector's Finding 3): a fixed scene (…@SEED) in which D_down is collected and every
    # D_down rollout runs; θ_pre, D_cap, θ_sft and θ_aux never see it
    down_scene: str | None = None
    # the scene D_cap is recorded (and its rollouts run) in, e.g. per-episode random task-irrelevant visuals
    cap_scene: str | None = None
    # vector quality (Finding 5): for each scene, D_cap recorded in it, its own θ_sft/θ_aux and vector, and
    # CapVector from that vector beside the main one (`capvector[dcap=SCENE]`)
    cap_scene_sweep: tuple[str, ...] = ()
    # knowledge preservation (VLA-GSE): rollouts on the pretraining tasks after every downstream fine-tune
    forgetting: bool = False
    forgetting_episodes: int = 3  # per pretraining task and seed
    # evaluation
    eval_episodes: int = 10  # per task and seed (seeds, not episodes, are what varies between policies)
    eval_seed: int = 5000  # the test range's rollout base seed (1000 was used for choices in 0.1)
    max_steps: int = 150
    workers: int = 2
    ood_perturbations: tuple[str, ...] = ("camera:0.5", "lighting:0.7", "colors:0.5", "distractors:0.5")
    ood_episodes: int = 5  # per task, seed and perturbation
    videos: int = 1
    threads: int = 2
    # CPU cores the pipeline may keep busy: with more than 1, stages whose inputs are ready run side by side, each
    # counting `threads` (training) or `workers` (rollouts) against it. Results are the same however many.
    jobs: int = 1
    # "test": a reported run, kept off the validation ranges; "validation": a run to choose a setting or to check a
    # test-range result on, which must use the validation ranges (its report says it is not a reported result)
    ranges: str = "test"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CapvectorError(f"pipeline config: mode must be one of {MODES}, found {self.mode!r}")
        self._qualify_presets()
        if not self.seeds:
            raise CapvectorError("pipeline config: seeds must not be empty")
        self._check_ranges()
        if not self.down_budgets or list(self.down_budgets) != sorted(set(self.down_budgets)):
            raise CapvectorError(f"pipeline config: down_budgets must be increasing, found {self.down_budgets}")
        for name in ("cap_steps", "tuner_steps", "eval_episodes", "ood_episodes", "batch_size", "cap_episodes",
                     "down_episodes", "forgetting_episodes", "jobs"):
            if getattr(self, name) <= 0:
                raise CapvectorError(f"pipeline config: {name} must be positive, found {getattr(self, name)}")
        if self.teacher in self.combine_teachers or len(set(self.combine_teachers)) != len(self.combine_teachers):
            raise CapvectorError(f"pipeline config: combine_teachers {list(self.combine_teachers)} must be distinct "
                                 f"and differ from the main teacher {self.teacher!r}")
        for spec in self.combine_methods:
            combine_spec(spec)  # names a bad method or density now, not when its stage runs
        unknown = set(self.tuners) - {"full", "lora", "gse"}
        if unknown:
            raise CapvectorError(f"pipeline config: unknown tuners {sorted(unknown)}; use full, lora, gse")
        if any(getattr(self, f"{role}_tasks") is not None for role in TASK_ROLES):
            self._check_tasks()
        self._check_scenes()
        if self.gse_options:
            self._check_gse_options()
        if self.gse_sweep:
            self._check_gse_sweep()

    def _check_ranges(self) -> None:
        """A test run stays off the validation ranges that settings are chosen on; a validation run stays on them."""
        if self.ranges not in ("test", "validation"):
            raise CapvectorError(f"pipeline config: ranges must be 'test' or 'validation', found {self.ranges!r}")
        seeds = (*self.seeds, *(() if self.cap_seed is None else (self.cap_seed,)))
        if self.ranges == "validation":
            outside = sorted(s for s in seeds if s not in VALIDATION_TRAIN_SEEDS)
            if outside or self.eval_seed != VALIDATION_EVAL_SEED:
                raise CapvectorError(
                    f"pipeline config: a validation run uses training seeds {VALIDATION_TRAIN_SEEDS.start}–"
                    f"{VALIDATION_TRAIN_SEEDS.stop - 1} and rollout base seed {VALIDATION_EVAL_SEED}; found training "
                    f"seeds {outside or list(seeds)} / rollout seed {self.eval_seed}")
            return
        chosen_on = sorted(s for s in seeds if s in VALIDATION_TRAIN_SEEDS)
        if chosen_on or self.eval_seed == VALIDATION_EVAL_SEED:
            raise CapvectorError(
                f"pipeline config: training seeds {chosen_on or list(seeds)} / rollout seed {self.eval_seed} "
                f"overlap the validation ranges (training seeds {VALIDATION_TRAIN_SEEDS.start}–"
                f"{VALIDATION_TRAIN_SEEDS.stop - 1}, rollout base seed {VALIDATION_EVAL_SEED}) that settings are "
                "chosen on; reported runs use other seeds (a run to choose on sets \"ranges\": \"validation\")")

    def _check_scenes(self) -> None:
        """Parse every scene and store its canonical label (what the stages are fingerprinted by); 'none' is unset."""
        from capvector.sim.perturb import parse_scene

        def canonical(name: str, spec: str | None) -> str | None:
            if spec is None:
                return None
            if not isinstance(spec, str):
                raise CapvectorError(f"pipeline config: {name} must be a scene spec string, found {spec!r}")
            try:
                label = parse_scene(spec).label
            except CapvectorError as e:
                raise CapvectorError(f"pipeline config: {name}: {e}") from None
            return None if label == "none" else label

        down = canonical("down_scene", self.down_scene)
        if down is not None and parse_scene(down).fixed is None:
            raise CapvectorError(f"pipeline config: down_scene {down!r} must be a fixed scene (add '@SEED', e.g. "
                                 f"{down}@1): a novel environment is one environment, the same in every episode")
        if down is not None and self.ood_perturbations:
            raise CapvectorError(f"pipeline config: down_scene {down!r} with ood_perturbations "
                                 f"{list(self.ood_perturbations)}: the perturbation suite is defined on the clean "
                                 "scene; set ood_perturbations to [] for a novel-environment run")
        cap = canonical("cap_scene", self.cap_scene)
        sweep = tuple(canonical("cap_scene_sweep", s) or "none" for s in self.cap_scene_sweep)
        if len(set(sweep)) != len(sweep) or (cap or "none") in sweep:
            raise CapvectorError(f"pipeline config: cap_scene_sweep {list(sweep)} must be distinct scenes other than "
                                 f"the main D_cap's ({cap or 'none'})")
        object.__setattr__(self, "down_scene", down)
        object.__setattr__(self, "cap_scene", cap)
        object.__setattr__(self, "cap_scene_sweep", sweep)

    def _check_gse_options(self) -> None:
        """Build the GSE arm's GSEConfig now, so a bad option fails before any stage runs (one line, the field)."""
        from capvector.gse import GSEConfig

        known = {f.name for f in fields(GSEConfig)} - {"r", "target_modules"}
        unknown = sorted(set(self.gse_options) - known)
        if unknown:
            raise CapvectorError(f"pipeline config: gse_options has unknown GSEConfig fields {unknown}")
        GSEConfig(r=self.gse_r, **self.gse_options)

    def _check_gse_sweep(self) -> None:
        """Each row: a non-empty object of design fields whose merged options make a valid GSEConfig at `gse_r`,
        differ from the GSE arm's and from every other row's (one line naming the row)."""
        from capvector.gse import GSEConfig

        if "gse" not in self.tuners:
            raise CapvectorError(f"pipeline config: gse_sweep ablates the GSE arm, but tuners {list(self.tuners)} "
                                 "has no 'gse'")
        arm = GSEConfig(r=self.gse_r, **self.gse_options)
        built: list[Any] = []
        names: list[str] = []
        for i, row in enumerate(self.gse_sweep):
            where = f"pipeline config: gse_sweep row {i} ({row!r})"
            if not isinstance(row, dict) or not row:
                raise CapvectorError(f"{where}: expected a non-empty object of GSE fields, e.g. "
                                     "{\"init_type\": \"mgse\"}")
            unknown = sorted(set(row) - set(GSE_SWEEP_FIELDS))
            if unknown:
                raise CapvectorError(f"{where}: cannot ablate {unknown}; rows change only {list(GSE_SWEEP_FIELDS)} "
                                     "(the rank r and the adapted modules stay the GSE arm's, so rows have equal "
                                     "trainable parameters but for the router)")
            try:
                config = GSEConfig(r=self.gse_r, **{**self.gse_options, **row})
            except (ValueError, TypeError) as e:  # GSEConfigError is a ValueError; float("x") raises one too
                raise CapvectorError(f"{where}: {e}") from None
            if config == arm:
                raise CapvectorError(f"{where}: trains the same adapter as the GSE arm (gse_options "
                                     f"{self.gse_options}, defaults of GSEConfig otherwise)")
            name = gse_row_name(row)
            if config in built or name in names:
                j = built.index(config) if config in built else names.index(name)
                raise CapvectorError(f"{where}: repeats row {j} (the same adapter or the same name {name!r})")
            built.append(config)
            names.append(name)

    def _qualify_presets(self) -> None:
        from capvector.policy.registry import policy_types

        if self.policy not in policy_types():
            raise CapvectorError(f"pipeline config: policy must be one of {sorted(policy_types())}, "
                                 f"found {self.policy!r}")

        def qualified(name: str) -> str:
            family = name.split(":", 1)[0] if ":" in name else self.policy
            if family != self.policy:
                raise CapvectorError(f"pipeline config: preset {name!r} selects {family} parameters but the "
                                     f"policy is {self.policy}; use a {self.policy}:… preset or a bare group name")
            return name if ":" in name else f"{self.policy}:{name}"

        object.__setattr__(self, "vector_preset", qualified(self.vector_preset))
        object.__setattr__(self, "preset_sweep", tuple(qualified(p) for p in self.preset_sweep))

    def tasks(self, role: str) -> tuple[str, ...]:
        """The task list of a role ("pretrain", "cap", "down"): the configured one, else the named split."""
        from capvector.sim.tasks import split_tasks

        configured = getattr(self, f"{role}_tasks")
        return tuple(configured) if configured is not None else tuple(split_tasks(role))

    def split_spec(self, role: str) -> str:
        """What collection and evaluation stages are given: the split's name when it is the named split (so runs
        cached before task lists were configurable stay valid), else the comma-separated task list."""
        configured = getattr(self, f"{role}_tasks")
        return role if configured is None else ",".join(configured)

    def _check_tasks(self) -> None:
        from capvector.sim.tasks import demo_ready, split_tasks

        lists = {}
        for role in TASK_ROLES:
            tasks = self.tasks(role)
            if not tasks or len(set(tasks)) != len(tasks):
                raise CapvectorError(f"pipeline config: {role}_tasks must be non-empty and without repeats, "
                                     f"found {list(tasks)}")
            split_tasks(",".join(tasks))  # names every unknown task
            lists[role] = set(tasks)
        for role in ("cap", "down"):
            demo_ready(self.tasks(role), f"{role}_tasks")
        for a, b in (("pretrain", "cap"), ("pretrain", "down"), ("cap", "down")):
            both = sorted(lists[a] & lists[b])
            if both:
                raise CapvectorError(f"pipeline config: {a}_tasks and {b}_tasks overlap in {both}; "
                                     "downstream tasks must be held out")

    @property
    def down_steps(self) -> int:
        return self.down_budgets[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_mode(cls, mode: str, **overrides: Any) -> PipelineConfig:
        """The named mode's settings, then `overrides` (e.g. from a JSON file) on top."""
        if mode not in MODES:
            raise CapvectorError(f"unknown mode {mode!r}; choose from {MODES}")
        return _from_dict({**MODE_SETTINGS[mode], "mode": mode, **overrides}, f"mode {mode}")

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineConfig:
        """A JSON object of fields; `mode` (default "default") picks the base settings the file overrides."""
        path = Path(path)
        data = read_json_object(path, "pipeline config")
        mode = data.pop("mode", "default")
        reject_unknown_keys(data, PipelineConfig, str(path), "pipeline config")
        return cls.for_mode(mode, **data)


MODE_SETTINGS: dict[str, dict[str, Any]] = {
    # CI smoke test of the whole pipeline, every study included: tiny budgets, one seed, effect sizes meaningless.
    # Every stage kind runs as in the other modes, at the smallest sizes that still do: one demo and one 30-step
    # rollout per task, batch 8. One training thread: on a busy machine two made a 40-step run 7× slower.
    "quick": dict(seeds=(0,), cap_episodes=1, down_episodes=1, cap_steps=40, down_budgets=(20, 40), tuner_steps=40,
                  batch_size=8, threads=1, weight_sweep=(0.5,), preset_sweep=("vlm",), orth_control=True,
                  tuners=("full", "lora", "gse"), eval_episodes=1, ood_episodes=1, max_steps=30,
                  ood_perturbations=("camera:0.5",)),
    "default": {},
    "extended": dict(weight_sweep=(0.5, 1.5, 2.0), preset_sweep=("vlm",), orth_control=True,
                     orth_sweep=(1e-5, 1e-3), tuners=("full", "lora", "gse"), down_budgets=(150, 400, 1500)),
}


def combine_spec(spec: str) -> tuple[str, float | None]:
    """"ties:0.2" → ("ties", 0.2); "sum" → ("sum", None); checked by `capvector.vectors.combine.Combine`."""
    from capvector.vectors.combine import Combine

    method, _, density = spec.partition(":")
    try:
        value = float(density) if density else None
    except ValueError:
        raise CapvectorError(f"pipeline config: combine method {spec!r}: density {density!r} is not a number") from None
    try:
        Combine(method, value)
    except CapvectorError as e:
        raise CapvectorError(f"pipeline config: combine method {spec!r}: {e}") from None
    return method, value


def _from_dict(data: dict[str, Any], source: str) -> PipelineConfig:
    reject_unknown_keys(data, PipelineConfig, source, "pipeline config")
    tuples = {f.name for f in fields(PipelineConfig) if str(f.type).startswith("tuple")}
    data = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()}
    return PipelineConfig(**data)


def gse_row_name(row: dict[str, Any]) -> str:
    """A gse_sweep row as "field=value,…" in its own order (floats in %g): what its method and stages are named."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


__all__ = ["GSE_SWEEP_FIELDS", "MODES", "MODE_SETTINGS", "PipelineConfig", "gse_row_name"]
