"""Export a factored (LoRA-derived) capability vector as an exact PEFT LoRA adapter.

τ = B·A per module becomes lora_B = λ·B, lora_A = A with lora_alpha = r (scale 1), so loading the
adapter onto θ_pre with PEFT gives θ_pre + λ·τ without ever materialising a dense model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from capvector.errors import CapvectorError
from capvector.io import AtomicOutputDir
from capvector.io.atomic import atomic_write_json
from capvector.io.peft_adapter import PREFIX
from capvector.vectors.format import CapabilityVector

EXPORT_RECORD = "capvector-export.json"


def export_peft_adapter(
    vector: str | Path,
    output: str | Path,
    *,
    weight: float = 1.0,
    base_model_name_or_path: str | None = None,
    embedding_modules: tuple[str, ...] = (),
    overwrite: bool = False,
) -> Path:
    """Write a PEFT LoRA adapter directory equal to `weight`·τ. Every tensor must be factored.

    `embedding_modules` names modules that are `nn.Embedding` (PEFT stores their update transposed).
    """
    with CapabilityVector(vector) as vec:
        dense = [n for n in vec.names() if not vec.is_factored(n)]
        if dense:
            raise CapvectorError(
                f"{vec.path}: {len(dense)} tensors are stored dense (first: {dense[:3]}); only factored "
                "vectors can be exported exactly as LoRA. Merge into a full checkpoint instead"
            )
        if not all(n.endswith(".weight") for n in vec.names()):
            raise CapvectorError(f"{vec.path}: factored tensors must be '.weight' parameters")
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        for name in vec.names():
            module = name.removesuffix(".weight")
            b, a = vec.factors(name)
            if module in embedding_modules or module.split(".")[-1] in embedding_modules:
                tensors[f"{PREFIX}{module}.lora_embedding_A"] = b.T.contiguous()
                tensors[f"{PREFIX}{module}.lora_embedding_B"] = (weight * a.T).contiguous()
            else:
                tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
                tensors[f"{PREFIX}{module}.lora_B.weight"] = (weight * b).contiguous()
            ranks[module] = a.shape[0]
        r = max(ranks.values())
        source = vec.meta.get("sources", {})
        base_name = base_model_name_or_path or (vec.meta.get("architecture") or {}).get("base_model_name_or_path")
        config = {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": base_name,
            "r": r,
            "lora_alpha": r,
            # PEFT reads pattern keys as regexes matched at the end of module paths.
            "rank_pattern": {re.escape(m): k for m, k in ranks.items() if k != r},
            "alpha_pattern": {re.escape(m): k for m, k in ranks.items() if k != r},
            "target_modules": sorted(ranks),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "init_lora_weights": True,
            "inference_mode": True,
        }
        provenance = {"vector": str(Path(vector).resolve()), "weight": weight, "sources": source}
    with AtomicOutputDir(output, overwrite, inputs=[Path(vector)]) as tmp:
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        atomic_write_json(tmp / "adapter_config.json", config)
        atomic_write_json(tmp / EXPORT_RECORD, provenance)  # beside, not inside: PEFT warns on unknown config keys
    return Path(output)
