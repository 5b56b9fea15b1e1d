"""The model card (`README.md`) of a capability-vector directory, generated from `capvector.json`.

Vectors are shared like adapters, so a vector directory carries a Hugging Face style card: YAML front
matter (`library_name: capvector`, tags, `base_model` when known, and a `capvector:` block with the
summary fields) and a Markdown body saying what the vector is, where it came from and how to merge it.
`capvector inspect` reads the front matter back, so a hand-edited card (e.g. a task set added later)
is what inspect reports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from capvector.io.hub import parse_hub_id

CARD_FILE = "README.md"
TAGS = ("capvector", "capability-vector", "task-arithmetic", "robotics", "vision-language-action")
_HUB_CACHE = re.compile(r"models--([^/]+?)--([^/]+)$")


def hub_id(path: str | Path | None) -> str | None:
    """The Hub repo id of a checkpoint path when it shows one: a Hub cache snapshot
    (`.../models--ORG--NAME/snapshots/<rev>`) or an `ORG/NAME[@REV]` string that is not a local path."""
    if path is None:
        return None
    p = Path(path)
    for part in (p, *p.parents):
        m = _HUB_CACHE.search(part.name) if part.name.startswith("models--") else None
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    parsed = parse_hub_id(str(path))
    return parsed[0] if parsed and not p.exists() else None


def card_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Front-matter fields of the card, from a vector's `capvector.json` contents."""
    storages = sorted({t.get("storage", "dense") for t in meta.get("tensors", {}).values()})
    summary = {
        "definition": meta.get("definition"),
        "selection": meta.get("selection"),
        "default_weight": meta.get("default_weight", 1.0),
        "task_set": meta.get("task_set"),
        "tensors": meta.get("totals", {}).get("tensors"),
        "numel": meta.get("totals", {}).get("numel"),
        "norm": meta.get("totals", {}).get("norm"),
        "dtype": meta.get("dtype"),
        "storage": storages[0] if len(storages) == 1 else storages,
        "architecture": meta.get("architecture"),
        "sources": {role: {"path": src.get("path"), "hash": src.get("hash")}
                    for role, src in meta.get("sources", {}).items()},
        "tool_version": meta.get("tool_version"),
    }
    out: dict[str, Any] = {"library_name": "capvector", "tags": list(TAGS)}
    if meta.get("base_model"):
        out["base_model"] = meta["base_model"]
    out["capvector"] = {k: v for k, v in summary.items() if v is not None}
    return out


def render_card(meta: dict[str, Any], name: str) -> str:
    """The whole README.md text: front matter (YAML through huggingface_hub's card data, so the Hub parses
    it as its own), then a body a reader can act on."""
    from huggingface_hub import ModelCardData

    data = card_metadata(meta)
    s = data["capvector"]
    sel = s.get("selection") or {}
    weight = s.get("default_weight", 1.0)
    rows = [
        ("base model", f"`{data['base_model']}`" if "base_model" in data else "not recorded"),
        ("task set (D_cap)", s.get("task_set") or "not recorded"),
        ("recommended λ", f"{weight:g}"),
        ("selection", (f"preset `{sel['preset']}`; " if sel.get("preset") else "")
         + f"include `{' '.join(sel.get('include', []))}`"
         + (f", exclude `{' '.join(sel['exclude'])}`" if sel.get("exclude") else "")),
        ("tensors", f"{s.get('tensors')} ({s.get('numel'):,} elements), ‖τ‖ = {s.get('norm', 0.0):.6g}"),
        ("storage", f"{s.get('dtype')}, {s.get('storage')}"),
        ("created", f"{meta.get('created', 'unknown')} with capvector {meta.get('tool_version', '?')}"),
    ]
    lines = [
        "---", ModelCardData(**data).to_yaml(), "---", "",
        f"# Capability vector `{name}`", "",
        "A CapVector capability vector τ_cap = θ_aux − θ_sft (per tensor, fp32): the difference between a",
        "fine-tune with an auxiliary objective (θ_aux) and a plain SFT fine-tune (θ_sft) of the same pretrained",
        "model on the same data, order, seed and steps. Merged as θ_meta = θ_pre + λ·τ_cap, it gives a model",
        "that plain SFT (plus capvector's orthogonal regulariser) fine-tunes on downstream tasks.", "",
        "| field | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), "",
        "## Sources", "", "| role | path | kind | content hash |", "| --- | --- | --- | --- |",
        *(f"| {role} | `{src.get('path')}` | {src.get('kind')} | {src.get('hash') or 'not hashed'} |"
          for role, src in meta.get("sources", {}).items()),
        "",
    ]
    skipped = meta.get("skipped") or {}
    if skipped:
        lines += ["## Left out", "", *(f"- {reason}: {len(names)} tensors, e.g. `{names[0]}`"
                                      for reason, names in skipped.items() if names), ""]
    if meta.get("note"):
        lines += ["## Notes", "", str(meta["note"]).strip(), ""]
    lines += [
        "## Use", "", "```bash",
        f"capvector merge --base <θ_pre> --vector {name} --weight {weight:g} -o meta_model",
        "```", "", "```python", "import capvector", "",
        f'capvector.merge("<θ_pre>", [capvector.VectorWeight("{name}", {weight!r})], "meta_model")',
        "```", "",
    ]
    return "\n".join(lines)


def read_card(directory: str | Path) -> dict[str, Any] | None:
    """The card's front matter and title, or None when the directory has no card.

    A card that does not parse is reported as `{"file", "error"}` rather than raised: the tensors are
    still worth inspecting.
    """
    from huggingface_hub import ModelCard

    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=False)
    except Exception as e:  # noqa: BLE001 - yaml and hub validation errors have no common base
        return {"file": str(path), "error": f"front matter does not parse: {e}"}
    title = next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), None)
    return {"file": str(path), "title": title, "metadata": card.data.to_dict()}
