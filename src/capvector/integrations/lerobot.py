"""LeRobot pi0, pi0.5 and SmolVLA: a VLM plus a Gemma-style action expert, fully fine-tuned.

Parameter names are those of LeRobot's policy `model.safetensors` (policy.model is the flow-matching
module, hence the leading `model.`):

* pi0 / pi0.5: `model.paligemma_with_expert.paligemma.*` is a transformers PaliGemma
  (`model.vision_tower`, `model.multi_modal_projector`, `model.language_model`, `lm_head`);
  `model.paligemma_with_expert.gemma_expert.*` is the Gemma action expert (no token embedding);
  small projections sit at the top level (`model.action_in_proj`, `model.action_out_proj`, and
  `model.state_proj` + `model.action_time_mlp_{in,out}` for pi0, `model.time_mlp_{in,out}` for pi0.5).
* SmolVLA: `model.vlm_with_expert.vlm.*` is a transformers SmolVLM (`model.vision_model`,
  `model.connector`, `model.text_model`, `lm_head`), `model.vlm_with_expert.lm_expert.*` the expert.

openpi's own PyTorch trainer saves the same pi0/pi0.5 module without the `model.` prefix
(`paligemma_with_expert.*`, `action_in_proj.*`): family `openpi`.

See docs/integrations.md for the sources and example keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from capvector.integrations._family import Family, FamilyFiles, PresetSpec, register_family
from capvector.integrations._lerobot_files import locate_lerobot, locate_openpi

_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LINEAR_RX = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def _presets(vision: list[str], projector: list[str], language: list[str], vlm: str, expert: str,
             heads: list[str]) -> dict[str, PresetSpec]:
    return {
        "vision": PresetSpec(tuple(vision), description="vision encoder only"),
        "projector": PresetSpec(tuple(projector), description="vision-to-language projector only"),
        "language": PresetSpec(tuple(language), description="VLM language model (incl. embeddings, lm_head)"),
        "vlm": PresetSpec((vlm,), description="whole VLM (vision + projector + language): the paper's 'VLM only'"),
        "action_expert": PresetSpec((expert,), description="action-expert transformer only"),
        "action_heads": PresetSpec(tuple(heads), description="action/state/time projections around the expert"),
        "vlm+expert": PresetSpec((vlm, expert), description="VLM + action expert: the paper's better choice"),
        "full": PresetSpec((vlm, expert, *heads), description="VLM + expert + projections: all the policy holds"),
    }


def _locator(family: str):
    def locate(path: Path) -> FamilyFiles:
        return locate_lerobot(path, family)
    return locate


_PI_HEADS = ["action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out"]
_PI05_HEADS = ["action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"]


def _pi_family(name: str, heads: list[str], description: str, root: str = "model.",
               locate: Callable[[Path], FamilyFiles] | None = None) -> Family:
    """pi0-style policy under `root` (LeRobot: `model.`, openpi's PyTorch checkpoints: no prefix).

    The globs accept both PaliGemma layouts: transformers >= 4.52 (`paligemma.model.language_model.*`,
    `paligemma.model.vision_tower.*`, `paligemma.lm_head`) and older checkpoints
    (`paligemma.language_model.model.*`, `paligemma.vision_tower.vision_model.*`, `paligemma.language_model.lm_head`).
    """
    pg, expert = root + "paligemma_with_expert.paligemma.", root + "paligemma_with_expert.gemma_expert."
    rx_root = re.escape(root)
    return Family(
        name=name,
        description=description,
        presets=_presets(
            vision=[pg + "*vision_tower.*"],
            projector=[pg + "*multi_modal_projector.*"],
            language=[pg + "*language_model.*", pg + "lm_head.*"],
            vlm=pg + "*",
            expert=expert + "*",
            heads=[f"{root}{h}.*" for h in heads],
        ),
        locate=locate or _locator(name),
        orth_targets=tuple(f"{p}layers.*.{lin}.weight" for p in (pg + "*language_model.*", expert + "model.")
                           for lin in _LINEAR),
        gse_target_modules=(
            rf"{rx_root}paligemma_with_expert\.(paligemma\.(model\.)?language_model(\.model)?|gemma_expert\.model)"
            rf"\.layers\.\d+\.{_LINEAR_RX}"
        ),
        gse_target_suffixes=_LINEAR,
    )


PI0 = register_family(_pi_family(
    "pi0", _PI_HEADS, "LeRobot pi0 (PaliGemma 3B VLM + Gemma 300M action expert)"))

PI05 = register_family(_pi_family(
    "pi05", _PI05_HEADS,
    "LeRobot pi0.5 (PaliGemma VLM + Gemma action expert with adaptive RMSNorm conditioned on time)"))

OPENPI = register_family(_pi_family(
    "openpi", list(dict.fromkeys(_PI_HEADS + _PI05_HEADS)),
    "openpi PyTorch pi0 / pi0.5 checkpoints (same modules as LeRobot's, without the leading `model.`)",
    root="", locate=locate_openpi))

_VLM = "model.vlm_with_expert.vlm."
_LM_EXPERT = "model.vlm_with_expert.lm_expert."

SMOLVLA = register_family(Family(
    name="smolvla",
    description="LeRobot SmolVLA (SmolVLM2 VLM, truncated, + a narrower Llama-style action expert)",
    presets=_presets(
        vision=[_VLM + "model.vision_model.*"],
        projector=[_VLM + "model.connector.*"],
        language=[_VLM + "model.text_model.*", _VLM + "lm_head.*"],
        vlm=_VLM + "*",
        expert=_LM_EXPERT + "*",
        heads=["model.state_proj.*", "model.action_in_proj.*", "model.action_out_proj.*",
               "model.action_time_mlp_in.*", "model.action_time_mlp_out.*"],
    ),
    locate=_locator("smolvla"),
    orth_targets=tuple(f"{p}layers.*.{lin}.weight" for p in (_VLM + "model.text_model.", _LM_EXPERT)
                       for lin in _LINEAR),
    gse_target_modules=rf"model\.vlm_with_expert\.(vlm\.model\.text_model|lm_expert)\.layers\.\d+\.{_LINEAR_RX}",
    gse_target_suffixes=_LINEAR,
))
