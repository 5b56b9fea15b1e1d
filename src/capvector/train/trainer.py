"""One trainer for full fine-tuning, PEFT LoRA and any PEFT tuner (e.g. GSE), with optional spatial alignment.

Loss = the policy type's action loss (L1 on the parallel-decoded chunk for tiny-vla, flow-matching MSE for
tiny-pi0; `capvector.policy.registry`) + α·alignment (if `aux_weight` > 0) + Σ regularisers() + tuner aux loss
(if the tuner has one).

Determinism: the data order is a function of (seed, step) (`order.py`); the model, LoRA and projector
initialisations use separate seeded RNG streams, so a plain SFT run and an aux-SFT run with the same
seed start from the same weights and see the same batches — the assumption CapVector rests on.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from capvector import engines
from capvector.errors import CapvectorError
from capvector.io.atomic import AtomicOutputDir, atomic_save_safetensors, atomic_write_text, publish_dir
from capvector.loss_terms import tuner_aux_loss
from capvector.objectives import (
    LatentReasoning,
    SpatialAlignment,
    SubgoalPrediction,
    Teacher,
    make_teacher,
    objective_for,
)
from capvector.policy import PolicyConfig, TinyPolicy, build_policy, count_parameters, load_policy, type_of
from capvector.policy.registry import PolicyLoss
from capvector.progress import ProgressBar
from capvector.train.config import RESUMABLE_CHANGES, TrainConfig
from capvector.train.export import POLICY_DIR, snapshot_dir, write_trained
from capvector.train.order import StepBatchSampler
from capvector.train.state import PROJECTOR, TRAINED, latest_checkpoint, prune_checkpoints, read_state, write_state
from capvector.train.tracking import log_metrics, make_accelerator, tracking

Regularizer = Callable[[], torch.Tensor]  # reg() → scalar added to the loss (it holds what it reads)
REQUIRED_KEYS = ("image", "proprio", "instruction", "actions")
_INIT_SEED_OFFSET = {"model": 0, "tuner": 101, "projector": 202, "train": 303}


@dataclass
class TrainResult:
    run_dir: Path
    policy_dir: Path
    steps: int
    final_loss: float
    history: list[dict] = field(default_factory=list)


class _LossModule(nn.Module):
    """Policy (+ projector) in one module so DDP synchronises every trained parameter."""

    def __init__(self, model: nn.Module, alignment: SpatialAlignment | SubgoalPrediction | None,
                 action_loss: PolicyLoss) -> None:
        super().__init__()
        self.model = model
        self.alignment = alignment
        self.action_loss = action_loss

    def forward(self, image: torch.Tensor, proprio: torch.Tensor, text: torch.Tensor, actions: torch.Tensor,
                mask: torch.Tensor | None, targets: torch.Tensor | None,
                denominator: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        layer = self.alignment.layer if self.alignment is not None else None
        latent = isinstance(self.alignment, LatentReasoning)
        thoughts = self.alignment.thought_tokens(image.shape[0]) if latent else None
        name, action_loss, out = self.action_loss(self.model, image, proprio, text, actions, mask, denominator,
                                                  layer, thoughts)
        parts = {name: action_loss}
        total = action_loss
        if self.alignment is not None:
            hidden = {"visual": out.visual_hidden, "queries": out.query_hidden,
                      "thoughts": out.thought_hidden}[self.alignment.reads]
            aux = self.alignment(hidden, targets)
            parts[self.alignment.part_name] = aux
            total = total + self.alignment.weight * aux
        return total, parts


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Train a tiny policy (or resume a run) on a dataset that follows the data contract.

    `policy`: a model to start from (else `config.init`, else a fresh policy of `policy_config`'s type, the tiny
    VLA's defaults if None).
    `peft_config`: used with tuner "peft" (any PEFT config, e.g. GSE); tuner "lora" builds a LoraConfig.
    `regularizers`: name → callable added to the loss every step (e.g. the orthogonal regulariser).
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        policy: TinyPolicy | None = None,
        policy_config: PolicyConfig | None = None,
        peft_config: Any = None,
        regularizers: Mapping[str, Regularizer] | None = None,
        teacher: Teacher | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.cfg = config
        self.dataset = dataset
        self.regularizers = dict(regularizers or {})
        self.run_dir = Path(config.output_dir)
        self.accelerator = accelerator or make_accelerator(
            not torch.cuda.is_available(), config.log_with, Path(config.logging_dir or self.run_dir / "logs"))
        engines.check_requested_engine(str(self.accelerator.distributed_type))
        self.policy = self._build_policy(policy, policy_config)
        # Tuners that cannot be merged into dense weights (GSE's routed experts) ship base + adapter instead.
        self._base_state = ({k: v.detach().clone() for k, v in self.policy.state_dict().items()}
                            if config.tuner in ("gse", "peft") else None)
        self.model = self._apply_tuner(peft_config)
        if teacher is None and config.aux_weight > 0:
            teacher = make_teacher(config.teacher, config.teacher_path)
        self.teacher = teacher
        self.alignment = self._build_alignment()
        self.loss_module = _LossModule(self.model, self.alignment, type_of(self.policy).loss)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not trainable:
            raise CapvectorError("nothing to train: no parameter requires grad after applying the tuner")
        head_lr = config.lr_action_expert if config.lr_action_expert is not None else config.lr
        groups = [
            {"params": [p for n, p in trainable if ".action_expert." not in f".{n}"], "base_lr": config.lr},
            {"params": [p for n, p in trainable if ".action_expert." in f".{n}"], "base_lr": head_lr},
            {"params": list(self.alignment.parameters()) if self.alignment is not None else [], "base_lr": config.lr},
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                                           betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)
        self.loss_module, self.optimizer = self.accelerator.prepare(self.loss_module, self.optimizer)
        # Sharding engines replace Parameter objects in prepare(): take references only now.
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.accelerator.register_save_state_pre_hook(self._save_trained)
        self.accelerator.register_load_state_pre_hook(self._load_trained)
        for reg in self.regularizers.values():
            _bind_optimizer(reg, self.optimizer)
        self.step = 0
        self.history: list[dict] = []

    def add_regularizer(self, name: str, reg: Regularizer) -> None:
        """Add a loss term built from the tuned model, e.g. `OrthogonalRegularizer.from_vector(trainer.model, ...)`."""
        _bind_optimizer(reg, self.optimizer)
        self.regularizers[name] = reg

    # ---- construction -------------------------------------------------------------------------
    def _build_policy(self, policy: TinyPolicy | None, policy_config: PolicyConfig | None) -> TinyPolicy:
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.seed + _INIT_SEED_OFFSET["model"])
            if policy is None:
                policy = load_policy(self.cfg.init) if self.cfg.init else build_policy(policy_config)
        return policy.train()

    def _apply_tuner(self, peft_config: Any) -> nn.Module:
        cfg = self.cfg
        if cfg.tuner == "full":
            if peft_config is not None:
                raise CapvectorError("a PEFT config was given but tuner is 'full'; use tuner 'peft'")
            for p in self.policy.parameters():
                p.requires_grad_(True)
            return self.policy
        from peft import LoraConfig, get_peft_model

        if cfg.tuner == "lora":
            if peft_config is not None:
                raise CapvectorError("tuner 'lora' builds its own LoraConfig; pass a config with tuner 'peft'")
            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                     target_modules=list(cfg.lora_targets), bias="none")
        elif cfg.tuner == "gse":
            if peft_config is not None:
                raise CapvectorError("tuner 'gse' builds its own GSEConfig; pass a config with tuner 'peft'")
            try:
                from capvector.gse import GSEConfig
            except ImportError as e:
                raise CapvectorError("tuner 'gse' needs capvector.gse (the VLA-GSE tuner); not available") from e
            peft_config = GSEConfig(target_modules=list(cfg.lora_targets), **cfg.gse_options)
        elif peft_config is None:
            raise CapvectorError("tuner 'peft' needs a PEFT config object (e.g. capvector.gse.GSEConfig)")
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + _INIT_SEED_OFFSET["tuner"])
            model = get_peft_model(self.policy, peft_config)
        for name, p in self.policy.named_parameters():
            if any(fnmatchcase(name, g) for g in cfg.also_train):
                p.requires_grad_(True)
        return model

    def _build_alignment(self) -> SpatialAlignment | SubgoalPrediction | None:
        cfg, pc = self.cfg, self.policy.config
        if cfg.aux_weight == 0:
            return None
        layer = cfg.aux_layer if cfg.aux_layer is not None else max(1, round(0.75 * pc.depth))
        if not 0 <= layer <= pc.depth:
            raise CapvectorError(f"aux_layer must be in [0, {pc.depth}] for this policy, found {layer}")
        teacher_dim = self.teacher.target_dim
        objective = objective_for(getattr(self.teacher, "reads", "visual"))
        if objective.reads not in self.policy.hidden_streams:
            raise CapvectorError(f"teacher {cfg.teacher!r} supervises the {objective.reads} tokens, which a "
                                 f"{type_of(self.policy).name} policy does not have (it has "
                                 f"{', '.join(self.policy.hidden_streams)})")
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + _INIT_SEED_OFFSET["projector"])
            return objective(pc.width, teacher_dim, layer, cfg.aux_weight, cfg.aux_hidden, cfg.aux_layernorm)

    # ---- batches ------------------------------------------------------------------------------
    def _loader(self, start: int, stop: int) -> DataLoader:
        acc = self.accelerator
        sampler = StepBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, start, stop,
                                   acc.process_index, acc.num_processes)
        # Its own generator: creating the iterator must not draw from the global RNG (dropout stream).
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + start)
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=default_collate,
                          num_workers=self.cfg.num_workers, generator=gen)

    def _prepare(self, batch: Mapping[str, Any]) -> tuple:
        missing = [k for k in REQUIRED_KEYS if k not in batch]
        if missing:
            raise CapvectorError(f"training batch is missing keys {missing}; found {sorted(batch)}")
        dev = self.accelerator.device
        instructions = batch["instruction"]
        if isinstance(instructions, str):
            instructions = [instructions]
        text = self.policy.embed_instructions(list(instructions)).to(dev)
        mask = batch.get("action_mask")
        targets = None
        if self.alignment is not None:
            targets = self.teacher(batch, self.policy.config.grid).to(dev)
        denominator = None
        if mask is not None:
            mask = mask.to(dev)
            if self.accelerator.num_processes > 1:
                # Global count of real action entries / processes: the processes' mean loss is the global mean.
                count = self.accelerator.reduce(mask.sum().float() * batch["actions"].shape[-1], "sum")
                denominator = count.clamp_min(1.0) / self.accelerator.num_processes
        return (batch["image"].to(dev), batch["proprio"].to(dev), text, batch["actions"].to(dev), mask, targets,
                denominator)

    # ---- state --------------------------------------------------------------------------------
    def _save(self, step: int) -> None:
        """`accelerator.save_state` (trainable weights, optimizer, every process's RNG states; sharded as the engine
        shards) into a temporary directory, renamed once complete, so resume never picks up half a checkpoint."""
        acc = self.accelerator
        ckpt_dir = self.run_dir / "checkpoints"
        final = ckpt_dir / f"step_{step:07d}"
        tmp = ckpt_dir / f".step_{step:07d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_state(tmp, {"step": step, "config": self.cfg.to_dict()})
            publish_dir(tmp, final)
            prune_checkpoints(ckpt_dir, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()

    def _trained_tensors(self) -> dict[str, nn.Parameter]:
        module = self.accelerator.unwrap_model(self.loss_module)
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def _save_trained(self, models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        """accelerate save hook: for whole-weight engines write the trained tensors only, under unwrapped names
        (frozen ones come from the run's start point); FSDP/DeepSpeed save their own sharded way (`weights` empty)."""
        if not weights:
            return
        weights.clear()  # accelerate writes no model file of its own
        if self.accelerator.is_main_process:
            atomic_save_safetensors({n: p.detach() for n, p in self._trained_tensors().items()},
                                    Path(output_dir) / TRAINED)

    def _load_trained(self, models: list[nn.Module], input_dir: str) -> None:
        """accelerate load hook, the inverse of `_save_trained`: the trained tensors, by name, all of them."""
        if not models:
            return
        models.clear()  # accelerate loads no model file of its own
        path = Path(input_dir) / TRAINED
        if not path.is_file():
            raise CapvectorError(f"checkpoint {input_dir}: missing {TRAINED}")
        saved = load_file(str(path))
        params = self._trained_tensors()
        if set(saved) != set(params):
            missing, extra = sorted(set(params) - set(saved))[:5], sorted(set(saved) - set(params))[:5]
            raise CapvectorError(f"checkpoint {input_dir}: trained tensors differ from this run (missing {missing}, "
                                 f"extra {extra})")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device))

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is None:
            return
        state = read_state(ckpt)
        saved = dict(state.get("config", {}))
        now = self.cfg.to_dict()
        diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
        if diff:
            raise CapvectorError(f"cannot resume {ckpt}: config differs in {diff} "
                                 f"(saved {[saved.get(k) for k in diff]}, now {[now[k] for k in diff]})")
        self.accelerator.load_state(str(ckpt))
        self.step = int(state["step"])
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file() or not self.accelerator.is_main_process:
            return
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self.history = [json.loads(ln) for ln in kept]

    def _write_config(self) -> None:
        if not self.accelerator.is_main_process:
            return
        resolved = {"train": self.cfg.to_dict(), "policy": self.policy.config.to_dict(),
                    "tuner": type(self.model).__name__, "processes": self.accelerator.num_processes,
                    "regularizers": sorted(self.regularizers),
                    "aux_layer": self.alignment.layer if self.alignment is not None else None,
                    "trainable_parameters": count_parameters(self.model, trainable_only=True)}
        atomic_write_text(self.run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")

    # ---- training -----------------------------------------------------------------------------
    def train(self, resume: bool = True, stop_at: int | None = None) -> TrainResult:
        """Train to `config.steps` (or stop early at `stop_at`, e.g. to test resumption); returns the run summary."""
        cfg, acc = self.cfg, self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.step == 0:
            torch.manual_seed(cfg.seed + _INIT_SEED_OFFSET["train"])  # dropout stream; resume restores it
        if resume:
            self._resume()
        self._write_config()
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        metrics_path = self.run_dir / "metrics.jsonl"
        progress = ProgressBar("train", cfg.steps, completed=self.step,
                               enabled=cfg.progress and acc.is_main_process and sys.stderr.isatty())
        t_last, samples = time.perf_counter(), 0
        last_loss = float("nan")
        self.loss_module.train()
        with progress, tracking(acc, self.run_dir.name, cfg.to_dict()):
            for batch in self._loader(self.step, end):
                for group in self.optimizer.param_groups:
                    group["lr"] = group["base_lr"] * lr_factor(self.step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
                loss, parts = self.loss_module(*self._prepare(batch))
                for name, reg in self.regularizers.items():
                    value = reg()
                    parts[f"reg/{name}"] = value
                    loss = loss + value
                aux = tuner_aux_loss(self.model)
                if aux is not None:
                    parts["tuner_aux"] = aux
                    loss = loss + aux
                self.optimizer.zero_grad(set_to_none=True)
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(self._clip_params(), cfg.grad_clip) if cfg.grad_clip > 0 else None
                self.optimizer.step()
                self.step += 1
                samples += cfg.batch_size
                last_loss = float(acc.reduce(loss.detach(), "mean"))
                if self.step % cfg.log_every == 0 or self.step == end:
                    now = time.perf_counter()
                    record = {"step": self.step, "loss": last_loss,
                              **{k: float(acc.reduce(v.detach(), "mean")) for k, v in parts.items()},
                              "lr": self.optimizer.param_groups[0]["lr"],
                              "grad_norm": None if grad_norm is None else float(grad_norm),
                              "samples_per_s": samples / max(now - t_last, 1e-9)}
                    t_last, samples = now, 0
                    self.history.append(record)
                    if acc.is_main_process:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                    log_metrics(acc, record)
                    progress.update(completed=self.step,
                                    info=f"loss {record['loss']:.4f}  {record['samples_per_s']:.0f} samples/s")
                else:
                    progress.update(completed=self.step)
                if self.step in cfg.snapshot_steps and self.step < cfg.steps:
                    self._snapshot(self.step)  # before the checkpoint, so a resumed run never skips it
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                    self._save(self.step)
        acc.wait_for_everyone()
        self._save(self.step)
        if self.step >= cfg.steps:
            policy_dir = self.export(self.run_dir)
            if self.alignment is not None and acc.is_main_process:
                atomic_save_safetensors(self.alignment.state_dict(), self.run_dir / PROJECTOR)
        else:
            policy_dir = self.run_dir / POLICY_DIR
        return TrainResult(self.run_dir, policy_dir, self.step, last_loss, list(self.history))

    def _snapshot(self, step: int) -> None:
        """Export the policy as it is at `step` (for success-vs-steps curves), written atomically."""
        final = snapshot_dir(self.run_dir, step)
        if final.exists():
            return
        was_training = self.model.training
        if self.accelerator.is_main_process:
            with AtomicOutputDir(final) as tmp:
                self.export(tmp)
        else:
            self.export(final)  # a collective under sharded engines: every process joins, only the main one writes
        self.model.train(was_training)

    def _clip_params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def export(self, root: Path) -> Path:
        """Write the trained-directory format (`capvector.train.export`) into `root`; returns what `load_trained`
        opens. Every process must call it: under sharded engines the whole weights are gathered first (a collective);
        the main process writes them from an unsharded CPU copy of the model.
        """
        root = Path(root)
        whole = self._unsharded_copy()
        if not self.accelerator.is_main_process:
            return root / POLICY_DIR
        return write_trained(whole, root, self.cfg.tuner, self._base_state)

    def _unsharded_copy(self) -> nn.Module:
        """A CPU model equal to the trained one, rebuilt from the full state dict (whole weights whatever the engine,
        so saving never meets a DTensor or a flat shard)."""
        state = engines.full_state_dict(self.accelerator.unwrap_model(self.loss_module))
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        with torch.random.fork_rng():
            whole: nn.Module = build_policy(self.policy.config)
            if self.cfg.tuner != "full":
                from peft import get_peft_model

                whole = get_peft_model(whole, self.model.peft_config[self.model.active_adapter])
                trained = {n.replace(engines.FSDP1_SEGMENT, "") for n, p in self.model.named_parameters()
                           if p.requires_grad}
                for name, p in whole.named_parameters():  # requires_grad marks the also_train weights to export
                    p.requires_grad_(name in trained)
        whole.load_state_dict(state)
        return whole.train(self.model.training)


def _bind_optimizer(reg: Regularizer, optimizer: torch.optim.Optimizer) -> None:
    """Regularisers that can check it (the orthogonal one) fail if they read tensors the optimiser does not step."""
    bind = getattr(reg, "expect_updates_by", None)
    if callable(bind):
        bind(optimizer)
