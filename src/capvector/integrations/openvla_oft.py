"""OpenVLA-OFT: Prismatic VLM (fused DINOv2 + SigLIP timm backbones, MLP projector, Llama-2 7B) + extra heads.

`vla-scripts/finetune.py` (moojink/openvla-oft) trains LoRA (r=32, alpha=min(r,16), all linear layers,
Gaussian init) and writes, per checkpoint directory:

* the LoRA-merged model via `save_pretrained` (sharded `model-*.safetensors` + index, `config.json` with
  `OpenVLAForActionPrediction`): `vision_backbone.featurizer.*`, `vision_backbone.fused_featurizer.*`,
  `projector.fc{1,2,3}.*`, `language_model.model.*`, `language_model.lm_head.*`;
* the adapter in `lora_adapter/` (PEFT names `base_model.model.<name>.lora_{A,B}.weight`);
* `action_head--<step>_checkpoint.pt`, `proprio_projector--<step>_checkpoint.pt` (and
  `noisy_action_projector--*`, FiLM `vision_backbone--*`) as `torch.save(ddp_module.state_dict())`,
  so their keys start with `module.` (e.g. `module.model.fc1.weight`, `module.fc1.weight`).

The action head and proprio projector are trained from scratch in every run (θ_pre has none), so the
`vlm` preset is the capability vector; `action_head` / `proprio_projector` apply to those files only.
"""

from __future__ import annotations

from pathlib import Path

from capvector.errors import CapvectorError
from capvector.integrations._family import Family, FamilyFiles, PresetSpec, register_family
from capvector.integrations._files import has_weights, one_match, require_dir

_LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_VIT_LINEAR = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
LORA_ADAPTER_DIR = "lora_adapter"
# role -> file-name regex; written by finetune.py as f"{role}--{step}_checkpoint.pt" or "--latest_checkpoint.pt"
COMPONENTS = {
    "action_head": r"action_head--.*checkpoint\.pt",
    "proprio_projector": r"proprio_projector--.*checkpoint\.pt",
    "noisy_action_projector": r"noisy_action_projector--.*checkpoint\.pt",
    "vision_backbone": r"vision_backbone--.*checkpoint\.pt",
}


def locate(path: Path) -> FamilyFiles:
    """Merged model (or, without one, the LoRA adapter) plus the separately saved head files."""
    root = require_dir(path, "OpenVLA-OFT")
    if has_weights(root):
        main = root
    elif (root / LORA_ADAPTER_DIR / "adapter_config.json").is_file():
        main = root / LORA_ADAPTER_DIR
    else:
        raise CapvectorError(
            f"{root}: no OpenVLA-OFT weights (expected model-*.safetensors + model.safetensors.index.json "
            f"from save_pretrained, or {LORA_ADAPTER_DIR}/adapter_config.json)"
        )
    components = {}
    for role, pattern in COMPONENTS.items():
        hit = one_match(root, pattern, role, required=False)
        if hit is not None:
            components[role] = hit
    adapter = root / LORA_ADAPTER_DIR
    if main != adapter and (adapter / "adapter_config.json").is_file():
        components["lora_adapter"] = adapter
    return FamilyFiles(main=main, components=components)


_VISION = ("vision_backbone.*",)
_PROJECTOR = ("projector.*",)
_LANGUAGE = ("language_model.*",)

OPENVLA_OFT = register_family(Family(
    name="openvla-oft",
    description="OpenVLA-OFT (Prismatic: DINOv2+SigLIP, projector, Llama-2 7B; separate action head files)",
    presets={
        "vision": PresetSpec(_VISION, description="fused DINOv2 + SigLIP vision backbone"),
        "projector": PresetSpec(_PROJECTOR, description="vision-to-LLM MLP projector"),
        "language": PresetSpec(_LANGUAGE, description="Llama-2 LLM (incl. embeddings and lm_head)"),
        "vlm": PresetSpec(_VISION + _PROJECTOR + _LANGUAGE,
                          description="whole Prismatic VLM: what LoRA fine-tuning changes and θ_pre holds"),
        "action_head": PresetSpec(("module.*",), description="for action_head--*_checkpoint.pt files only"),
        "proprio_projector": PresetSpec(("module.*",),
                                        description="for proprio_projector--*_checkpoint.pt files only"),
    },
    locate=locate,
    orth_targets=tuple(f"language_model.model.layers.*.{lin}.weight" for lin in _LLM_LINEAR)
    + tuple(f"vision_backbone.*.blocks.*.{lin}.weight" for lin in _VIT_LINEAR)
    + ("projector.fc*.weight",),
    gse_target_modules=r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
    gse_target_suffixes=_LLM_LINEAR,
    default_preset="vlm",
))
