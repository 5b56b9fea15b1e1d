"""LoRA-derived vectors against PEFT's own merge_and_unload (an independent computation)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from capvector import CapabilityVector, VectorWeight, export_peft_adapter, extract, merge
from capvector.errors import CapvectorError
from testing_common import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]


def make_adapter(path, seed: int, r: int, **kw) -> None:
    torch.manual_seed(seed)
    model = get_peft_model(tiny_llama(0), LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS,
                                                     init_lora_weights=False, **kw))
    model.save_pretrained(path)


def merged_state(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), adapter_dir)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    tiny_llama(0).save_pretrained(root / "pre")
    make_adapter(root / "sft", seed=1, r=4)
    make_adapter(root / "aux", seed=2, r=6, use_rslora=True, alpha_pattern={"v_proj": 3.0})
    pre = merged_state(root / "pre", root / "sft")  # warm-up import; recomputed below
    from transformers import LlamaForCausalLM

    pre = {k: v.clone() for k, v in LlamaForCausalLM.from_pretrained(root / "pre").state_dict().items()}
    delta = {}
    for role in ("sft", "aux"):
        merged = merged_state(root / "pre", root / role)
        delta[role] = {k: merged[k] - pre[k] for k in pre}
    return root, pre, delta


def test_factored_vector_equals_peft_deltas(adapters, tmp_path):
    root, pre, delta = adapters
    extract(root / "sft", root / "aux", tmp_path / "vf", progress=False)
    extract(root / "sft", root / "aux", tmp_path / "vd", lora_storage="dense", progress=False)
    vf, vd = CapabilityVector(tmp_path / "vf"), CapabilityVector(tmp_path / "vd")
    assert sorted(vf.names()) == sorted(vd.names())
    assert len(vf.names()) == 2 * 3 + 1  # 2 layers × (q, v, down) + embeddings
    for name in vf.names():
        assert vf.is_factored(name) and not vd.is_factored(name)
        assert vf.tensors[name]["rank"] == 4 + 6
        direct = delta["aux"][name] - delta["sft"][name]
        torch.testing.assert_close(vf.dense(name), direct, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vd.dense(name), vf.dense(name), rtol=1e-5, atol=1e-6)


def test_lora_vector_merged_into_dense_base(adapters, tmp_path):
    root, pre, delta = adapters
    extract(root / "sft", root / "aux", tmp_path / "v", progress=False)
    merge(root / "pre", [VectorWeight(tmp_path / "v", 0.5)], tmp_path / "m", progress=False)
    merged = load_file(tmp_path / "m" / "model.safetensors")
    for name in pre:
        direct = pre[name] + 0.5 * (delta["aux"][name] - delta["sft"][name])
        torch.testing.assert_close(merged[name], direct, rtol=1e-5, atol=1e-6)


def test_export_as_peft_adapter_is_exact(adapters, tmp_path):
    root, pre, delta = adapters
    extract(root / "sft", root / "aux", tmp_path / "v", progress=False)
    export_peft_adapter(tmp_path / "v", tmp_path / "adapter", weight=0.5, embedding_modules=("embed_tokens",))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 10 and cfg["lora_alpha"] == 10
    via_peft = merged_state(root / "pre", tmp_path / "adapter")
    for name in pre:
        direct = pre[name] + 0.5 * (delta["aux"][name] - delta["sft"][name])
        torch.testing.assert_close(via_peft[name], direct, rtol=1e-5, atol=1e-6)


def test_adapter_and_full_checkpoint_cannot_be_mixed(adapters, tmp_path):
    root, _, _ = adapters
    with pytest.raises(CapvectorError, match="one input is a PEFT adapter and the other is a full checkpoint"):
        extract(root / "sft", root / "pre", tmp_path / "v", progress=False)


def test_dense_vector_cannot_be_exported_as_lora(adapters, tmp_path):
    root, _, _ = adapters
    extract(root / "sft", root / "aux", tmp_path / "v", lora_storage="dense", progress=False)
    with pytest.raises(CapvectorError, match="stored dense"):
        export_peft_adapter(tmp_path / "v", tmp_path / "adapter")
