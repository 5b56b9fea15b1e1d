"""StarVLA QwenOFT miniatures: `qwen_vl_interface.model` (a transformers Qwen2.5-VL / Qwen3-VL) + `action_model`.

Saved as StarVLA's trainer does (`accelerator.get_state_dict(framework)`): `safetensors.save_file` to
`checkpoints/steps_<N>_model.safetensors` (`save_format: safetensors`, untied embeddings as in
Qwen2.5-VL-7B) or `torch.save` to `final_model/pytorch_model.pt` (the default `pt`, tied embeddings as
in Qwen3-VL-4B). The merged VLM part also loads with `from_pretrained` of the transformers class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from integ_helpers import check_preset_roundtrip, perturb_, read_all
from safetensors.torch import save_file
from torch import nn
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

import capvector
from capvector.errors import CapvectorError
from capvector.integrations import QWEN_VLA

H = 16
TEXT = dict(hidden_size=H, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=64)
TOKENS = dict(image_token_id=60, video_token_id=61, vision_start_token_id=62)


def qwen25_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(**TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, hidden_size=H, intermediate_size=32, num_heads=2, out_hidden_size=H,
                           fullatt_block_indexes=[1], window_size=28, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        tie_word_embeddings=False, **TOKENS)


def qwen3_config() -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(**TEXT, head_dim=8, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                           "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=H, intermediate_size=32, num_heads=2, out_hidden_size=H,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           deepstack_visual_indexes=[1], num_position_embeddings=16),
        tie_word_embeddings=True, **TOKENS)


class MLPResNetBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H), nn.ReLU())


class L1RegressionActionHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layer_norm1, self.model.fc1 = nn.LayerNorm(H), nn.Linear(H, H)
        self.model.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(), MLPResNetBlock()])
        self.model.layer_norm2, self.model.fc2 = nn.LayerNorm(H), nn.Linear(H, 7)


class QwenVLInterface(nn.Module):
    def __init__(self, version: str) -> None:
        super().__init__()
        self.model = (Qwen2_5_VLForConditionalGeneration(qwen25_config()) if version == "2.5"
                      else Qwen3VLForConditionalGeneration(qwen3_config()))


class QwenvlOFT(nn.Module):
    """StarVLA's framework module names: `qwen_vl_interface`, `action_model`."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.qwen_vl_interface = QwenVLInterface(version)
        self.action_model = L1RegressionActionHead()


def make_runs(tmp: Path, version: str) -> tuple[Path, Path, Path]:
    torch.manual_seed(0)
    pre = QwenvlOFT(version)
    sft = QwenvlOFT(version)
    sft.load_state_dict(pre.state_dict())
    perturb_(sft, 1)
    aux = QwenvlOFT(version)
    aux.load_state_dict(sft.state_dict())
    perturb_(aux, 2)
    out = []
    for name, model in (("pre", pre), ("sft", sft), ("aux", aux)):
        run = tmp / name
        if version == "2.5":
            (run / "checkpoints").mkdir(parents=True)
            for step in (5, 10):  # the newest step is the one to use
                save_file(model.state_dict(), str(run / "checkpoints" / f"steps_{step}_model.safetensors"))
        else:
            (run / "final_model").mkdir(parents=True)
            torch.save(model.state_dict(), run / "final_model" / "pytorch_model.pt")
        (run / "config.yaml").write_text("framework:\n  name: QwenOFT\n")
        out.append(QWEN_VLA.locate(run).main)
    return tuple(out)


Q = "qwen_vl_interface.model."
EXPECTED = {
    "vision": lambda k: k.startswith(Q + "model.visual."),
    "language": lambda k: k.startswith((Q + "model.language_model.", Q + "lm_head.")),
    "vlm": lambda k: k.startswith(Q),
    "action_expert": lambda k: k.startswith("action_model."),
    "vlm+expert": lambda k: k.startswith((Q, "action_model.")),
}


@pytest.fixture(scope="module")
def runs25(tmp_path_factory) -> tuple[Path, Path, Path]:
    return make_runs(tmp_path_factory.mktemp("qwen25"), "2.5")


def test_locate_picks_newest_step_file(runs25):
    assert all(p.name == "steps_10_model.safetensors" for p in runs25)
    keys = read_all(runs25[0])
    for k in (Q + "model.visual.blocks.0.attn.qkv.weight", Q + "model.language_model.layers.1.mlp.up_proj.weight",
              Q + "lm_head.weight", "action_model.model.mlp_resnet_blocks.0.ffn.1.weight"):
        assert k in keys, k


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_qwen25_each_preset_touches_exactly_its_tensors(tmp_path, runs25, preset):
    check_preset_roundtrip(tmp_path, *runs25, f"qwen-vla:{preset}", EXPECTED[preset], weight=0.5)


def test_qwen25_merged_loads_into_starvla_and_transformers(tmp_path, runs25):
    merged = check_preset_roundtrip(tmp_path, *runs25, "qwen-vla:vlm+expert", EXPECTED["vlm+expert"])
    framework = QwenvlOFT("2.5")
    framework.load_state_dict(merged, strict=True)  # how StarVLA reloads its own checkpoints
    export = tmp_path / "vlm"
    export.mkdir()
    save_file({k.removeprefix(Q): v.contiguous() for k, v in merged.items() if k.startswith(Q)},
              str(export / "model.safetensors"))
    (export / "config.json").write_text(json.dumps(qwen25_config().to_dict()))
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(export)
    sd = vlm.state_dict()
    for k, v in merged.items():
        if k.startswith(Q):
            assert torch.equal(sd[k.removeprefix(Q)], v), k


def test_qwen3_pt_checkpoint_with_tied_embeddings(tmp_path):
    pre, sft, aux = make_runs(tmp_path / "runs", "3")
    assert pre.name == "pytorch_model.pt" and pre.parent.name == "final_model"
    merged = check_preset_roundtrip(tmp_path, pre, sft, aux, "qwen-vla:vlm", EXPECTED["vlm"])
    assert Q + "model.visual.deepstack_merger_list.0.linear_fc1.weight" in merged
    framework = QwenvlOFT("3")
    framework.load_state_dict(merged, strict=True)
    lm = framework.qwen_vl_interface.model
    assert lm.lm_head.weight is lm.model.language_model.embed_tokens.weight
    assert torch.equal(lm.lm_head.weight, merged[Q + "lm_head.weight"])


def test_locate_errors(tmp_path):
    with pytest.raises(CapvectorError, match="no StarVLA weights"):
        QWEN_VLA.locate(tmp_path)
    with pytest.raises(CapvectorError, match="no such StarVLA"):
        QWEN_VLA.locate(tmp_path / "missing")
    (tmp_path / "checkpoints").mkdir()
    for name in ("steps_7_model.safetensors", "steps_7_pytorch_model.pt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    with pytest.raises(CapvectorError, match="step 7 saved twice"):
        QWEN_VLA.locate(tmp_path)


def hf_name(framework_key: str, layout: str) -> str:
    """The test's own translation of a StarVLA key into a plain Qwen-VL directory's key."""
    name = framework_key.removeprefix(Q)
    if layout == "legacy":  # what Qwen2.5-VL's save_pretrained writes (and the Hub checkpoints hold)
        for new, old in (("model.visual.", "visual."), ("model.language_model.", "model.")):
            if name.startswith(new):
                return old + name.removeprefix(new)
    return name


def test_framework_vector_merges_into_a_plain_hf_qwen25_directory(tmp_path, runs25):
    """A `qwen-vla:vlm` vector from StarVLA files, renamed by the legacy prefix map, merged into the backbone's
    own `save_pretrained` directory: the same values as merging into the framework file, and it loads."""
    from capvector.integrations.qwen_vla import HF_PREFIX_MAPS

    pre, sft, aux = runs25
    framework_merged = check_preset_roundtrip(tmp_path, pre, sft, aux, "qwen-vla:vlm", EXPECTED["vlm"], weight=0.5)
    vec = tmp_path / "vec-qwen-vla_vlm"
    framework = QwenvlOFT("2.5")
    framework.load_state_dict(read_all(pre), strict=True)
    hf_dir = tmp_path / "Qwen2.5-VL-mini"
    framework.qwen_vl_interface.model.save_pretrained(hf_dir)
    hf_pre = read_all(hf_dir)
    assert "visual.blocks.0.attn.qkv.weight" in hf_pre and "model.layers.0.mlp.up_proj.weight" in hf_pre

    out = tmp_path / "hf-merged"
    recipe = capvector.merge(hf_dir, [capvector.VectorWeight(vec, 0.5)], out, prefix_map=HF_PREFIX_MAPS["legacy"],
                             progress=False)
    assert recipe["prefix_map"] == HF_PREFIX_MAPS["legacy"] and not recipe["warnings"]
    got = read_all(out)
    assert sorted(got) == sorted(hf_pre)
    moved = {hf_name(k, "legacy"): v for k, v in framework_merged.items() if k.startswith(Q)}
    assert set(moved) == set(hf_pre)
    for k, v in moved.items():
        assert torch.equal(got[k], v), k
    assert (out / "config.json").read_text() == (hf_dir / "config.json").read_text()
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    sd = vlm.state_dict()
    for k, v in framework_merged.items():
        if k.startswith(Q):
            assert torch.equal(sd[k.removeprefix(Q)], v), k


def test_prefix_map_errors_name_the_keys(tmp_path, runs25):
    from capvector.integrations.qwen_vla import HF_PREFIX_MAPS

    pre, sft, aux = runs25
    framework = QwenvlOFT("2.5")
    framework.load_state_dict(read_all(pre), strict=True)
    hf_dir = tmp_path / "hf"
    framework.qwen_vl_interface.model.save_pretrained(hf_dir)
    both = tmp_path / "vlm+expert"
    capvector.extract(sft, aux, both, preset="qwen-vla:vlm+expert", progress=False)
    # the action model has no place in a plain VLM directory: named, not dropped
    with pytest.raises(CapvectorError, match=r"start with no prefix .*'action_model\.model\.fc1\.weight'"):
        capvector.merge(hf_dir, [both], tmp_path / "o1", strip_prefix=Q, progress=False)
    # stripping alone gives today's in-memory names, which this (legacy-layout) directory does not have
    vlm = tmp_path / "vlm"
    capvector.extract(sft, aux, vlm, preset="qwen-vla:vlm", progress=False)
    n = len(read_all(hf_dir))  # the VLM's tensors; only lm_head keeps its name after stripping the prefix
    with pytest.raises(CapvectorError, match=rf"{n - 1} of {n} vector tensors are missing from base") as e:
        capvector.merge(hf_dir, [vlm], tmp_path / "o2", strip_prefix=Q, progress=False)
    assert "'qwen_vl_interface.model.model.language_model.embed_tokens.weight -> model.language_model." in str(e.value)
    assert "the base has e.g. 'lm_head.weight'" in str(e.value)
    with pytest.raises(CapvectorError, match=r"none of its .* tensors exist in base .*prefix map"):
        capvector.merge(hf_dir, [both], tmp_path / "o3", prefix_map={Q: "wrong.", "action_model.": "wrong2."},
                        progress=False)
    # --allow-missing skips the unmapped action model and says so in the recipe
    recipe = capvector.merge(hf_dir, [both], tmp_path / "o4", prefix_map=HF_PREFIX_MAPS["legacy"],
                             allow_missing=True, progress=False)
    assert any("action_model.model.fc1.weight" in w for w in recipe["warnings"])
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())  # failed merges left nothing behind


def test_cli_strip_prefix_into_a_qwen3_directory(tmp_path):
    """`capvector merge --strip-prefix`: Qwen3-VL directories use today's names, so one rule is enough; the
    tied lm_head (not saved by save_pretrained) is reported, then skipped with --allow-missing."""
    from typer.testing import CliRunner

    from capvector.cli import app

    pre, sft, aux = make_runs(tmp_path / "runs", "3")
    vec = tmp_path / "vec"
    capvector.extract(sft, aux, vec, preset="qwen-vla:vlm", progress=False)
    framework = QwenvlOFT("3")
    framework.load_state_dict(read_all(pre), strict=True)
    hf_dir = tmp_path / "Qwen3-VL-mini"
    framework.qwen_vl_interface.model.save_pretrained(hf_dir)
    assert "lm_head.weight" not in read_all(hf_dir)
    args = ["merge", "--base", str(hf_dir), "--vector", str(vec), "--strip-prefix", Q, "--json"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m1")])
    assert r.exit_code == 2 and "lm_head.weight -> lm_head.weight" in r.output
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m2"), "--allow-missing"])
    assert r.exit_code == 0, r.output
    got, s, a, p = read_all(tmp_path / "m2"), read_all(sft), read_all(aux), read_all(hf_dir)
    for k, base in p.items():
        torch.testing.assert_close(got[k], base + (a[Q + k] - s[Q + k]), rtol=0, atol=1e-6)
    tied = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "m2")
    assert torch.equal(tied.lm_head.weight, got["model.language_model.embed_tokens.weight"])
