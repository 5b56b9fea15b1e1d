"""StarVLA QwenOFT (and the other StarVLA Qwen frameworks): Qwen2.5-VL / Qwen3-VL backbone + action head.

StarVLA's trainer saves `accelerator.get_state_dict(framework)` as one file:
`<run>/checkpoints/steps_<N>_pytorch_model.pt` (default `save_format: pt`) or
`steps_<N>_model.safetensors`, and `<run>/final_model/pytorch_model.pt|model.safetensors`.
Names: `qwen_vl_interface.model.<transformers Qwen-VL name>` for the VLM
(`model.visual.*`, `model.language_model.*`, `lm_head.*` with transformers >= 4.52; `visual.*`,
`model.layers.*` before) and `action_model.*` for the head (QwenOFT: an MLP-ResNet L1 regression head,
`action_model.model.fc1.weight`, `action_model.model.mlp_resnet_blocks.0.ffn.1.weight`, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

from capvector.errors import CapvectorError
from capvector.integrations._family import Family, FamilyFiles, PresetSpec, register_family

_STEP_FILE = re.compile(r"steps_(\d+)_(?:pytorch_model\.pt|model\.safetensors)")
_FINAL_NAMES = ("model.safetensors", "pytorch_model.pt")
_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def locate(path: Path) -> FamilyFiles:
    """One weight file: the given file, a `final_model/` file, or the newest `checkpoints/steps_N_*` file."""
    p = Path(path)
    if p.is_file():
        return FamilyFiles(main=p)
    if not p.is_dir():
        raise CapvectorError(f"{p}: no such StarVLA checkpoint file or run directory")
    for d in (p, p / "final_model"):
        for name in _FINAL_NAMES:
            if (d / name).is_file():
                return FamilyFiles(main=d / name)
    for d in (p, p / "checkpoints"):
        if not d.is_dir():
            continue
        steps = [(int(m.group(1)), f) for f in d.iterdir() if (m := _STEP_FILE.fullmatch(f.name))]
        if steps:
            best = max(s for s, _ in steps)
            hits = [f for s, f in steps if s == best]
            if len(hits) > 1:
                raise CapvectorError(f"{d}: step {best} saved twice ({', '.join(h.name for h in hits)}); pass one")
            return FamilyFiles(main=hits[0])
    raise CapvectorError(
        f"{p}: no StarVLA weights (expected final_model/model.safetensors|pytorch_model.pt or "
        "checkpoints/steps_<N>_model.safetensors|steps_<N>_pytorch_model.pt)"
    )


_Q = "qwen_vl_interface.model."
_VISION = (_Q + "*visual.*",)

# Prefix maps (`capvector.merge(prefix_map=...)`, `capvector merge --map-prefix OLD=NEW`) that rename a vector
# extracted from a StarVLA file so it merges into a plain Hugging Face Qwen-VL directory of the backbone:
HF_PREFIX_MAPS = {
    # the names transformers >= 4.52 uses in memory and saves Qwen3-VL with (model.language_model.*, model.visual.*)
    "current": {_Q: ""},
    # the names Qwen2.5-VL checkpoints on the Hub have and save_pretrained still writes (model.layers.*, visual.*);
    # framework files from transformers < 4.52 already hold these names under the prefix, which the last rule maps
    "legacy": {_Q + "model.visual.": "visual.", _Q + "model.language_model.": "model.", _Q: ""},
}
_LANGUAGE_EXCLUDE = (_Q + "*visual.*",)

QWEN_VLA = register_family(Family(
    name="qwen-vla",
    description="StarVLA QwenOFT / QwenGR00T / QwenPI (Qwen2.5-VL or Qwen3-VL backbone + action model)",
    presets={
        "vision": PresetSpec(_VISION, description="Qwen-VL vision tower incl. its patch merger"),
        "language": PresetSpec((_Q + "*",), _LANGUAGE_EXCLUDE, description="Qwen LLM (embeddings, layers, lm_head)"),
        "vlm": PresetSpec((_Q + "*",), description="whole Qwen-VL backbone: the paper's 'VLM only'"),
        "action_expert": PresetSpec(("action_model.*",), description="the action head / action model"),
        "vlm+expert": PresetSpec((_Q + "*", "action_model.*"), description="backbone + action model"),
    },
    locate=locate,
    orth_targets=tuple(f"{_Q}*language_model.layers.*.{lin}.weight" for lin in _LINEAR)
    + tuple(f"{_Q}model.layers.*.{lin}.weight" for lin in _LINEAR),
    gse_target_modules=(
        r"qwen_vl_interface\.model\.model\.(language_model\.)?layers\.\d+\."
        r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    ),
    gse_target_suffixes=_LINEAR,
))
