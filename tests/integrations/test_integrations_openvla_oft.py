"""OpenVLA-OFT miniature: Prismatic module tree and names, `finetune.py`'s checkpoint-directory layout.

The model is a tiny `PreTrainedModel` with OpenVLA's attribute names (`vision_backbone.featurizer` /
`fused_featurizer` with timm ViT names and the patched LayerScale `scale_factor`, `projector.fc1-3`,
`language_model` = a transformers `LlamaForCausalLM`), saved sharded by `save_pretrained` beside
`action_head--<step>_checkpoint.pt` / `proprio_projector--<step>_checkpoint.pt` (DDP `module.` keys) and
the PEFT `lora_adapter/` (LoRA on all linear layers, Gaussian init, alpha = min(r, 16)).
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from integ_helpers import check_preset_roundtrip, read_all
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel

import capvector
from capvector.errors import CapvectorError
from capvector.integrations import OPENVLA_OFT
from capvector.vectors import CapabilityVector

D, LLM, STEP = 16, 24, 100


class ViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)
        self.ls1, self.ls2 = nn.Module(), nn.Module()
        self.ls1.scale_factor = nn.Parameter(torch.full((D,), 0.1))  # OpenVLA renames timm's `gamma`
        self.ls2.scale_factor = nn.Parameter(torch.full((D,), 0.1))


class TimmViT(nn.Module):
    """timm VisionTransformer parameter names (patch_embed.proj, cls/reg tokens, pos_embed, blocks, norm)."""

    def __init__(self, registers: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, D, 14, 14)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if registers:
            self.reg_token = nn.Parameter(torch.zeros(1, registers, D))
        self.pos_embed = nn.Parameter(torch.randn(1, 4, D) * 0.02)
        self.blocks = nn.ModuleList([ViTBlock(), ViTBlock()])
        self.norm = nn.LayerNorm(D)


class MiniOpenVLAConfig(PretrainedConfig):
    model_type = "openvla"

    def __init__(self, text_config: dict | None = None, **kwargs) -> None:
        self.text_config = LlamaConfig(**(text_config or {}))
        super().__init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["text_config"] = self.text_config.to_dict()
        return out


class MiniOpenVLA(PreTrainedModel):
    config_class = MiniOpenVLAConfig
    base_model_prefix = ""

    def __init__(self, config: MiniOpenVLAConfig) -> None:
        super().__init__(config)
        self.vision_backbone = nn.Module()
        self.vision_backbone.featurizer = TimmViT(registers=4)  # DINOv2 ViT-L/14 + registers
        self.vision_backbone.fused_featurizer = TimmViT(registers=0)  # SigLIP
        self.projector = nn.Module()
        self.projector.fc1, self.projector.fc2 = nn.Linear(2 * D, 4 * D), nn.Linear(4 * D, LLM)
        self.projector.fc3 = nn.Linear(LLM, LLM)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # random init is done by the submodules
        pass


TEXT = dict(hidden_size=LLM, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=64, tie_word_embeddings=False)


def build(seed: int) -> MiniOpenVLA:
    torch.manual_seed(seed)
    model = MiniOpenVLA(MiniOpenVLAConfig(text_config=TEXT, architectures=["OpenVLAForActionPrediction"]))
    return model.eval()


class MLPResNetBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(LLM), nn.Linear(LLM, LLM), nn.ReLU())


def heads(seed: int) -> tuple[dict, dict]:
    """Action head (MLP-ResNet L1 head) and proprio projector state dicts as DDP saves them (`module.`)."""
    torch.manual_seed(seed)
    head = nn.Module()
    head.model = nn.Module()
    head.model.layer_norm1, head.model.fc1 = nn.LayerNorm(LLM), nn.Linear(LLM, LLM)
    head.model.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(), MLPResNetBlock()])
    head.model.layer_norm2, head.model.fc2 = nn.LayerNorm(LLM), nn.Linear(LLM, 7)
    proprio = nn.Module()
    proprio.fc1, proprio.fc2 = nn.Linear(8, LLM), nn.Linear(LLM, LLM)
    return ({f"module.{k}": v for k, v in head.state_dict().items()},
            {f"module.{k}": v for k, v in proprio.state_dict().items()})


def save_heads(root: Path, seed: int) -> None:
    head, proprio = heads(seed)
    torch.save(head, root / f"action_head--{STEP}_checkpoint.pt")
    torch.save(proprio, root / f"proprio_projector--{STEP}_checkpoint.pt")
    (root / "dataset_statistics.json").write_text(json.dumps({"libero_spatial_no_noops": {"action": {}}}))


def lora_run(pre: MiniOpenVLA, seed: int, root: Path) -> Path:
    """One LoRA fine-tune saved as finetune.py does: adapter, head files, then the LoRA-merged model.

    LoraConfig as in finetune.py (r=32 scaled down to 4, alpha=min(r,16), all-linear, Gaussian init);
    the trained LoRA factors are stood in for by seeded noise.
    """
    cfg = peft.LoraConfig(r=4, lora_alpha=min(4, 16), target_modules="all-linear", init_lora_weights="gaussian")
    model = build(0)
    model.load_state_dict(pre.state_dict())
    peft_model = peft.get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    root.mkdir(parents=True)
    peft_model.save_pretrained(root / "lora_adapter")
    save_heads(root, seed)
    peft_model.merge_and_unload().save_pretrained(root, max_shard_size="40KB")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("oft")
    pre = build(0)
    pre_dir = tmp / "openvla-7b"
    pre.save_pretrained(pre_dir, max_shard_size="40KB")
    return pre_dir, lora_run(pre, 1, tmp / "sft"), lora_run(pre, 2, tmp / "aux")


VIS, PROJ, LANG = "vision_backbone.", "projector.", "language_model."
EXPECTED = {
    "vision": lambda k: k.startswith(VIS),
    "projector": lambda k: k.startswith(PROJ),
    "language": lambda k: k.startswith(LANG),
    "vlm": lambda k: k.startswith((VIS, PROJ, LANG)),
}


def test_layout_matches_finetune_py(runs):
    pre, sft, _ = runs
    files = OPENVLA_OFT.locate(sft)
    assert files.main == sft
    assert files.components["action_head"].name == f"action_head--{STEP}_checkpoint.pt"
    assert files.components["proprio_projector"].name == f"proprio_projector--{STEP}_checkpoint.pt"
    assert files.components["lora_adapter"] == sft / "lora_adapter"
    assert (sft / "model.safetensors.index.json").is_file() and len(list(sft.glob("model-*.safetensors"))) > 1
    keys = read_all(sft)
    for k in ("vision_backbone.featurizer.blocks.0.attn.qkv.weight", "vision_backbone.featurizer.reg_token",
              "vision_backbone.fused_featurizer.blocks.1.ls2.scale_factor", "projector.fc3.weight",
              "language_model.model.layers.1.self_attn.o_proj.weight", "language_model.lm_head.weight"):
        assert k in keys, k
    head = torch.load(files.components["action_head"], weights_only=True)
    assert "module.model.fc1.weight" in head and "module.model.mlp_resnet_blocks.0.ffn.1.weight" in head
    assert OPENVLA_OFT.locate(pre).components == {}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_preset_touches_exactly_its_tensors(tmp_path, runs, preset):
    check_preset_roundtrip(tmp_path, *runs, f"openvla-oft:{preset}", EXPECTED[preset], weight=0.5)


def test_merged_model_loads_with_from_pretrained_and_keeps_head_files(tmp_path, runs):
    pre, sft, aux = runs
    merged = check_preset_roundtrip(tmp_path, sft, sft, aux, "openvla-oft:vlm", EXPECTED["vlm"])
    out = next(tmp_path.glob("merged-*"))
    model = MiniOpenVLA.from_pretrained(out)
    sd = model.state_dict()
    for k, v in merged.items():
        assert torch.equal(sd[k], v), k
    # a fine-tuned OFT base keeps its own head files: merge copies them byte for byte
    for role in ("action_head", "proprio_projector"):
        src = OPENVLA_OFT.locate(sft).components[role]
        assert (out / src.name).read_bytes() == src.read_bytes()
    assert OPENVLA_OFT.locate(out).components.keys() >= {"action_head", "proprio_projector"}


def test_action_head_preset_selects_the_head_file(tmp_path, runs):
    _, sft, aux = runs
    s, a = (OPENVLA_OFT.locate(r).components["action_head"] for r in (sft, aux))
    vec = tmp_path / "head-vec"
    capvector.extract(s, a, vec, preset="openvla-oft:action_head", progress=False)
    assert sorted(CapabilityVector(vec).names()) == sorted(torch.load(s, weights_only=True))


def test_locate_errors(tmp_path):
    with pytest.raises(CapvectorError, match="must be a directory"):
        OPENVLA_OFT.locate(tmp_path / "nope")
    with pytest.raises(CapvectorError, match="no OpenVLA-OFT weights"):
        OPENVLA_OFT.locate(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    for step in (5, 10):
        (tmp_path / f"action_head--{step}_checkpoint.pt").write_bytes(b"")
    with pytest.raises(CapvectorError, match="2 action_head files"):
        OPENVLA_OFT.locate(tmp_path)
