"""The families' GSE defaults attach the VLA-GSE tuner to exactly the intended layers of each miniature."""

from __future__ import annotations

import re

import peft
import pytest
import torch
from test_integrations_lerobot import PI0Model, Policy
from test_integrations_openvla_oft import build as build_oft
from test_integrations_qwen_vla import QwenvlOFT
from torch import nn

from capvector.gse import GSEConfig, GSELinear
from capvector.integrations import OPENPI, OPENVLA_OFT, PI0, PI05, QWEN_VLA, SMOLVLA

CASES = {
    "pi0": (PI0, lambda: Policy("pi0")),
    "pi05": (PI05, lambda: Policy("pi05")),
    "smolvla": (SMOLVLA, lambda: Policy("smolvla")),
    "openpi": (OPENPI, lambda: PI0Model(pi05=False)),
    "openvla-oft": (OPENVLA_OFT, lambda: build_oft(0)),
    "qwen-vla": (QWEN_VLA, lambda: QwenvlOFT("2.5")),
}
LAYER_LINEAR = re.compile(r".*layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
BACKBONE = {
    "pi0": ("model.paligemma_with_expert.paligemma.model.language_model.", "model.paligemma_with_expert.gemma_expert."),
    "pi05": ("model.paligemma_with_expert.paligemma.model.language_model.",
             "model.paligemma_with_expert.gemma_expert."),
    "smolvla": ("model.vlm_with_expert.vlm.model.text_model.", "model.vlm_with_expert.lm_expert."),
    "openpi": ("paligemma_with_expert.paligemma.model.language_model.", "paligemma_with_expert.gemma_expert."),
    "openvla-oft": ("language_model.model.",),
    "qwen-vla": ("qwen_vl_interface.model.model.language_model.",),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gse_wraps_exactly_the_default_targets(name):
    family, make = CASES[name]
    torch.manual_seed(0)
    model = make()
    want = {n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.startswith(BACKBONE[name]) and LAYER_LINEAR.fullmatch(n)}
    assert want
    cfg = GSEConfig(r=4, num_experts=2, top_k=1, target_modules=family.gse_target_modules)
    wrapped = peft.get_peft_model(model, cfg)
    got = {n.removeprefix("base_model.model.") for n, m in wrapped.named_modules() if isinstance(m, GSELinear)}
    assert got == want
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(any(f".{t}." in n for t in want) for n in trainable)
