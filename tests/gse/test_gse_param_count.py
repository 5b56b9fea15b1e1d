"""Reproduce the reference's trainable-parameter count on Qwen3-VL-4B (shapes only, meta device)."""

from __future__ import annotations

import collections

import peft
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from capvector.gse import GSEConfig, GSELinear

# Qwen/Qwen3-VL-4B-Instruct config.json (the public values that fix every Linear shape).
QWEN3_VL_4B = {
    "text_config": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                    "tie_word_embeddings": True},
    "vision_config": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                      "out_hidden_size": 2560, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "deepstack_visual_indexes": [5, 11, 17], "num_position_embeddings": 2304},
    "tie_word_embeddings": True,
}
REFERENCE_GSE_PARAMS = 48_414_720  # VLA-GSE paper / DESIGN.md §2.2, r=16, E=8 (1 generalized), all-linear


def test_default_config_reproduces_the_reference_count_on_qwen3_vl_4b() -> None:
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**QWEN3_VL_4B))
    total = sum(p.numel() for p in model.parameters())
    model = peft.get_peft_model(model, GSEConfig())  # defaults: r=16, E=8, G=1, top_k=2, all-linear
    breakdown: collections.Counter[str] = collections.Counter()
    for name, module in model.named_modules():
        if isinstance(module, GSELinear):
            tower = "vision" if ".visual." in name else "language"
            breakdown[f"{tower}.factors"] += module.gse_A["default"].numel() + module.gse_B["default"].numel()
            breakdown[f"{tower}.router"] += module.gse_router["default"].numel()
    trainable, _ = model.get_nb_trainable_parameters()
    print(f"\nQwen3-VL-4B: {total:,} base parameters; GSE trainable by part:")
    for key in sorted(breakdown):
        print(f"  {key:18s} {breakdown[key]:>12,}")
    print(f"  {'total':18s} {trainable:>12,}  ({trainable / total:.2%} of the VLM)")
    assert sum(breakdown.values()) == trainable == REFERENCE_GSE_PARAMS
    assert not any(name.endswith("lm_head") for name, m in model.named_modules() if isinstance(m, GSELinear))
