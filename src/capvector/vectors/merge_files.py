"""What a merged model directory holds besides its weights: the base's model files, and a new model card.

A base checkpoint is often a training output: beside config, tokenizer and processor files it holds the
optimizer, RNG and trainer state, TensorBoard runs, sub-checkpoints. A merged model needs none of that
(and gigabytes of optimizer state are a cost), and the base's README.md describes the base, not the
merge. So known training state is skipped and listed in the recipe, the card is written anew with
huggingface_hub's ModelCard (`base_model`, `base_model_relation: merge`, the recipe), and every other
file (config, tokenizer, processor, chat template, LeRobot pre/post-processor state, remote code, a
family's head files, norm statistics) is copied byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path, PurePath
from typing import Any

from capvector.vectors.card import CARD_FILE, hub_id

# file names (any folder) and top-level folders that training writes and a model never reads
TRAINING_FILES = (
    "optimizer.pt", "optimizer.bin", "optimizer.safetensors", "optimizer_*.pt", "optimizer_*.bin",
    "scheduler.pt", "scheduler.bin", "scaler.pt", "rng_state*.pth", "random_states_*.pkl",
    "trainer_state.json", "training_args.bin", "metadata.pt", "events.out.tfevents.*", "zero_to_fp32.py",
)
TRAINING_DIRS = ("runs", "wandb", "training_state", "checkpoint-*", "global_step*", "logs", "tensorboard")
# the card's first line per combine method (capvector.vectors.combine)
FORMULAS = {
    "sum": "θ_meta = θ_base + Σ_i λ_i·τ_i",
    "ties": "θ_meta = θ_base + TIES(λ_i·τ_i): each τ_i trimmed to its largest magnitudes per tensor, a sign elected "
            "per element, the values agreeing with it averaged",
    "dare": "θ_meta = θ_base + Σ_i λ_i·DARE(τ_i): elements dropped at random, the survivors divided by the keep "
            "probability",
    "dare-ties": "θ_meta = θ_base + TIES sign election and disjoint mean of λ_i·DARE(τ_i)",
}


def is_training_state(rel: PurePath) -> bool:
    """True for optimizer/RNG/trainer state, logs and sub-checkpoints, the base's own card."""
    if rel.as_posix() == CARD_FILE:
        return True
    if any(fnmatchcase(part, d) for part in rel.parts[:-1] for d in TRAINING_DIRS):
        return True
    return any(fnmatchcase(rel.name, f) for f in TRAINING_FILES)


def split_base_files(files: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """(files to copy, names of skipped training state) from a base's non-weight files."""
    copy, skipped = [], []
    for rel in files:
        (skipped.append(rel.as_posix()) if is_training_state(rel) else copy.append(rel))
    return copy, skipped


def _base_card_fields(base_root: Path | None) -> dict[str, Any]:
    """License and task fields of the base's card, which still describe the merged model."""
    from huggingface_hub import ModelCard

    path = base_root / CARD_FILE if base_root is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        data = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.to_dict()
    except Exception:  # noqa: BLE001 - a base card that does not parse simply contributes nothing
        return {}
    return {k: data[k] for k in ("license", "license_name", "license_link", "language", "pipeline_tag",
                                 "library_name") if data.get(k)}


def _base_model_id(base: Path, vectors_meta: Sequence[Mapping[str, Any]]) -> str | None:
    ids = [hub_id(base)] + [m.get("base_model") for m in vectors_meta]
    return next((i for i in ids if isinstance(i, str) and i), None)


def render_merge_card(recipe: Mapping[str, Any], base: Path, base_root: Path | None,
                      vectors_meta: Sequence[Mapping[str, Any]]) -> str:
    """README.md of a merged model: Hub front matter through ModelCardData, and the recipe in words."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = _base_model_id(base, vectors_meta)
    fields = _base_card_fields(base_root)
    tags = ["capvector", "merge", "capability-vector", "task-arithmetic"]
    extra = {"base_model": base_model, "base_model_relation": "merge"} if base_model else {}
    data = ModelCardData(tags=tags, **fields, **extra)
    rows = []
    for v in recipe["vectors"]:
        w = v["weight"]
        weight = f"{w:g}" if isinstance(w, int | float) else ", ".join(f"`{k}`: {x:g}" for k, x in w.items())
        rows.append(f"| `{Path(v['path']).name}` | {weight} |")
    title = f"Merged model: {base_model or Path(recipe['base']['path']).name} + capability vectors"
    body = "\n".join([
        f"# {_escape(title)}", "",
        f"{FORMULAS[recipe['combine']['method']]}, computed in fp32 and cast to the output dtype by "
        f"capvector {recipe['tool_version']} on {recipe['created']}.", "",
        f"- base: `{base_model or recipe['base']['path']}`",
        f"- combine: {_combine_line(recipe['combine'])}",
        f"- output dtype: {recipe['dtype']}",
        f"- merged tensors: {recipe['merged_tensors']} of {recipe['total_tensors']}", "",
        "| vector | λ |", "| --- | --- |", *rows, "",
        "The full recipe (paths, hashes of the sources, prefix map, warnings) is in `capvector-merge.json`.", "",
    ])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _combine_line(combine: Mapping[str, Any]) -> str:
    params = [f"{k} {combine[k]:g}" for k in ("density", "seed") if combine.get(k) is not None]
    return f"{combine['method']}" + (f" ({', '.join(params)})" if params else "")


def _escape(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text)
