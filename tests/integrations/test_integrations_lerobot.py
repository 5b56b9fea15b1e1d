"""LeRobot pi0 / pi0.5 / SmolVLA miniatures: real module tree and key names, LeRobot's file layout.

The policy is rebuilt from transformers classes with tiny random configs, wrapped in modules with
LeRobot's attribute names (`policy.model.paligemma_with_expert.{paligemma,gemma_expert}`,
`policy.model.vlm_with_expert.{vlm,lm_expert}`, top-level projections), and saved the way LeRobot saves
(`huggingface_hub.save_torch_state_dict` into `pretrained_model/model.safetensors`, tied duplicates
dropped). Loading back uses LeRobot's loader call, `safetensors.torch.load_model(policy, file, strict=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import save_torch_state_dict
from integ_helpers import check_preset_roundtrip, perturb_, read_all
from safetensors.torch import load_model
from torch import nn
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaModel,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from capvector.errors import CapvectorError
from capvector.integrations import PI0, PI05, SMOLVLA, get_family

W, WE, WS, ACT, STATE = 16, 8, 12, 6, 5  # VLM width, pi0 / SmolVLA expert widths, action dim, state dim

TEXT = dict(hidden_size=W, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, vocab_size=64)


def paligemma() -> PaliGemmaForConditionalGeneration:
    cfg = PaliGemmaConfig(
        text_config=dict(model_type="gemma", **TEXT),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=W, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                           projection_dim=W),
        image_token_index=63, vocab_size=64, projection_dim=W)
    return PaliGemmaForConditionalGeneration(cfg)


def gemma_expert() -> GemmaForCausalLM:
    expert = GemmaForCausalLM(GemmaConfig(**{**TEXT, "hidden_size": WE, "intermediate_size": 16}))
    expert.model.embed_tokens = None  # LeRobot drops the expert's unused token embedding
    return expert


class AdaRMSNorm(nn.Module):
    """pi0.5 expert norms: the scale comes from a Linear on the time embedding (`dense`), no `weight`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, 3 * dim)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, adarms: bool) -> None:
        super().__init__()
        self.paligemma = paligemma()
        self.gemma_expert = gemma_expert()
        if adarms:
            for layer in self.gemma_expert.model.layers:
                layer.input_layernorm = AdaRMSNorm(WE)
                layer.post_attention_layernorm = AdaRMSNorm(WE)
            self.gemma_expert.model.norm = AdaRMSNorm(WE)


class PI0Model(nn.Module):
    def __init__(self, pi05: bool) -> None:
        super().__init__()
        self.paligemma_with_expert = PaliGemmaWithExpert(adarms=pi05)
        self.action_in_proj = nn.Linear(ACT, WE)
        self.action_out_proj = nn.Linear(WE, ACT)
        if pi05:
            self.time_mlp_in = nn.Linear(WE, WE)
            self.time_mlp_out = nn.Linear(WE, WE)
        else:
            self.state_proj = nn.Linear(STATE, WE)
            self.action_time_mlp_in = nn.Linear(2 * WE, WE)
            self.action_time_mlp_out = nn.Linear(WE, WE)


class SmolVLMWithExpert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = SmolVLMConfig(
            text_config=dict(model_type="llama", **{k: v for k, v in TEXT.items() if k != "head_dim"}),
            vision_config=dict(hidden_size=W, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14),
            scale_factor=2, vocab_size=64, image_token_id=60)
        self.vlm = SmolVLMForConditionalGeneration(cfg)
        self.lm_expert = LlamaModel(LlamaConfig(hidden_size=WS, intermediate_size=16, num_hidden_layers=2,
                                                num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
        self.lm_expert.embed_tokens = None
        # cross-attention layers (every other one by default) read the VLM's keys/values: k/v take its width
        text = self.vlm.config.text_config
        vlm_kv = text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
        for i, layer in enumerate(self.lm_expert.layers):
            if i % 2:
                out = layer.self_attn.k_proj.out_features
                layer.self_attn.k_proj = nn.Linear(vlm_kv, out, bias=False)
                layer.self_attn.v_proj = nn.Linear(vlm_kv, out, bias=False)


class VLAFlowMatching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vlm_with_expert = SmolVLMWithExpert()
        self.state_proj = nn.Linear(STATE, W)
        self.action_in_proj = nn.Linear(ACT, WS)
        self.action_out_proj = nn.Linear(WS, ACT)
        self.action_time_mlp_in = nn.Linear(2 * WS, WS)
        self.action_time_mlp_out = nn.Linear(WS, WS)


class Policy(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.model = VLAFlowMatching() if kind == "smolvla" else PI0Model(pi05=kind == "pi05")


class AlignedPolicy(Policy):
    """The auxiliary run's policy carries an alignment projector that no other run has."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.align_projector = nn.Sequential(nn.Linear(W, 2 * W), nn.GELU(), nn.Linear(2 * W, 2 * W))


def save_lerobot(policy: nn.Module, run: Path, kind: str) -> Path:
    """LeRobot's training layout: <run>/checkpoints/<step>/pretrained_model/{model.safetensors,config.json}."""
    out = run / "checkpoints" / "000010" / "pretrained_model"
    out.mkdir(parents=True)
    save_torch_state_dict(policy.state_dict(), str(out), max_shard_size="10GB")
    (out / "config.json").write_text(json.dumps({"type": kind, "n_action_steps": 5}))
    (run / "checkpoints" / "last").symlink_to("000010")
    return out


def make_runs(tmp: Path, kind: str) -> tuple[Path, Path, Path]:
    """θ_pre, θ_sft (pre + τ_task) and θ_aux (same τ_task + τ_cap, plus a projector), as LeRobot dirs."""
    torch.manual_seed(0)
    pre = Policy(kind)
    sft = Policy(kind)
    sft.load_state_dict(pre.state_dict())
    perturb_(sft, seed=1)
    aux = AlignedPolicy(kind)
    aux.load_state_dict(sft.state_dict(), strict=False)
    perturb_(aux, seed=2)
    return tuple(save_lerobot(m, tmp / name, kind) for m, name in ((pre, "pre"), (sft, "sft"), (aux, "aux")))


PG = "model.paligemma_with_expert.paligemma."
EXPERT = "model.paligemma_with_expert.gemma_expert."

PI_EXPECTED = {
    "vision": lambda k: k.startswith(PG + "model.vision_tower."),
    "projector": lambda k: k.startswith(PG + "model.multi_modal_projector."),
    "language": lambda k: k.startswith((PG + "model.language_model.", PG + "lm_head.")),
    "vlm": lambda k: k.startswith(PG),
    "action_expert": lambda k: k.startswith(EXPERT),
    "action_heads": lambda k: k.startswith("model.") and k.split(".")[1] != "paligemma_with_expert",
    "vlm+expert": lambda k: k.startswith("model.paligemma_with_expert."),
    "full": lambda k: k.startswith("model."),
}


@pytest.fixture(scope="module")
def pi0_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    return make_runs(tmp_path_factory.mktemp("pi0"), "pi0")


def test_pi0_miniature_has_lerobot_key_names(pi0_runs):
    from safetensors import safe_open

    with safe_open(str(pi0_runs[0] / "model.safetensors"), "pt") as h:
        keys = set(h.keys())
    for k in (PG + "model.language_model.layers.0.self_attn.q_proj.weight",
              PG + "model.multi_modal_projector.linear.weight",
              EXPERT + "model.layers.1.mlp.down_proj.weight",
              "model.action_time_mlp_in.weight", "model.state_proj.bias"):
        assert k in keys, k
    assert not any(k.startswith(EXPERT + "model.embed_tokens") for k in keys)
    assert any(k.startswith(PG + "model.vision_tower.") for k in keys)


@pytest.mark.parametrize("preset", sorted(PI_EXPECTED))
def test_pi0_each_preset_touches_exactly_its_tensors(tmp_path, pi0_runs, preset):
    pre, sft, aux = pi0_runs
    check_preset_roundtrip(tmp_path, pre, sft, aux, f"pi0:{preset}", PI_EXPECTED[preset], weight=0.7)


def test_pi0_merged_policy_loads_back_like_lerobot(tmp_path, pi0_runs):
    pre, sft, aux = pi0_runs
    merged = check_preset_roundtrip(tmp_path, pre, sft, aux, "pi0:vlm+expert", PI_EXPECTED["vlm+expert"])
    out = next(tmp_path.glob("merged-*"))
    policy = Policy("pi0")
    missing, unexpected = load_model(policy, str(out / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    sd = policy.state_dict()
    for k, v in merged.items():
        assert torch.equal(sd[k], v), k
    assert (out / "config.json").is_file()


def test_pi0_aux_projector_is_never_selected(tmp_path, pi0_runs):
    """The alignment projector exists only in θ_aux; every preset leaves it out, `all` refuses it."""
    pre, sft, aux = pi0_runs
    with pytest.raises(CapvectorError, match="only in aux"):
        import capvector

        capvector.extract(sft, aux, tmp_path / "v", preset="all", progress=False)


def test_pi05_presets_on_adarms_expert(tmp_path):
    pre, sft, aux = make_runs(tmp_path / "runs", "pi05")
    check_preset_roundtrip(tmp_path, pre, sft, aux, "pi05:action_expert", PI_EXPECTED["action_expert"])
    check_preset_roundtrip(tmp_path, pre, sft, aux, "pi05:action_heads", PI_EXPECTED["action_heads"])
    vec = next(tmp_path.glob("vec-pi05_action_expert"))
    from capvector.vectors import CapabilityVector

    assert EXPERT + "model.layers.0.input_layernorm.dense.weight" in CapabilityVector(vec).names()


VLM = "model.vlm_with_expert.vlm."
SMOL_EXPECTED = {
    "vision": lambda k: k.startswith(VLM + "model.vision_model."),
    "projector": lambda k: k.startswith(VLM + "model.connector."),
    "language": lambda k: k.startswith((VLM + "model.text_model.", VLM + "lm_head.")),
    "vlm": lambda k: k.startswith(VLM),
    "action_expert": lambda k: k.startswith("model.vlm_with_expert.lm_expert."),
    "vlm+expert": lambda k: k.startswith("model.vlm_with_expert."),
}


def test_smolvla_presets(tmp_path):
    pre, sft, aux = make_runs(tmp_path / "runs", "smolvla")
    for preset in ("vlm", "vlm+expert", "vision"):
        check_preset_roundtrip(tmp_path, pre, sft, aux, f"smolvla:{preset}", SMOL_EXPECTED[preset])
    out = next(tmp_path.glob("merged-*vlm_expert"))
    missing, unexpected = load_model(Policy("smolvla"), str(out / "model.safetensors"), strict=True)
    assert not missing and not unexpected


@pytest.mark.parametrize("family", [PI0, PI05, SMOLVLA])
def test_locate_finds_model_safetensors_in_run_layouts(tmp_path, family):
    pm = tmp_path / "run" / "checkpoints" / "000100" / "pretrained_model"
    pm.mkdir(parents=True)
    (pm / "model.safetensors").write_bytes(b"")
    (tmp_path / "run" / "checkpoints" / "last").symlink_to("000100")
    for given in (pm, pm.parent, tmp_path / "run"):
        assert family.locate(given).main.resolve() == pm.resolve()
    with pytest.raises(CapvectorError, match="model.safetensors"):
        family.locate(tmp_path)


def test_get_family():
    assert get_family("pi0") is PI0
    with pytest.raises(CapvectorError, match="unknown VLA family"):
        get_family("pi1")


def test_openpi_pytorch_checkpoints(tmp_path):
    """openpi's train_pytorch.py: `safetensors.torch.save_model(model)` into `<exp>/<step>/model.safetensors`."""
    from safetensors.torch import save_model

    from capvector.integrations import OPENPI

    torch.manual_seed(0)
    pre = PI0Model(pi05=False)
    sft = PI0Model(pi05=False)
    sft.load_state_dict(pre.state_dict())
    perturb_(sft, 1)
    aux = PI0Model(pi05=False)
    aux.load_state_dict(sft.state_dict())  # the same τ_task, then τ_cap on top
    perturb_(aux, 2)
    runs = []
    for name, model in (("pre", pre), ("sft", sft), ("aux", aux)):
        for step in (500, 1000):
            d = tmp_path / name / str(step)
            d.mkdir(parents=True)
            save_model(model, str(d / "model.safetensors"))
            torch.save({"step": step}, d / "metadata.pt")
        (tmp_path / name / "tmp_1500").mkdir()  # an unfinished save is never picked
        runs.append(OPENPI.locate(tmp_path / name).main)
    assert all(r.name == "1000" for r in runs)
    expected = {
        "vlm+expert": lambda k: k.startswith("paligemma_with_expert."),
        "action_heads": lambda k: not k.startswith("paligemma_with_expert."),
        "language": lambda k: k.startswith(("paligemma_with_expert.paligemma.model.language_model.",
                                            "paligemma_with_expert.paligemma.lm_head.")),
    }
    for preset, pred in expected.items():
        check_preset_roundtrip(tmp_path, *runs, f"openpi:{preset}", pred)
    out = next(tmp_path.glob("merged-*vlm_expert"))
    missing, unexpected = load_model(PI0Model(pi05=False), str(out / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    with pytest.raises(CapvectorError, match="no openpi weights"):
        OPENPI.locate(tmp_path)


def _old_paligemma_layout(key: str) -> str:
    """Key names of LeRobot pi0 checkpoints written with transformers < 4.52 (PaliGemma without `.model`)."""
    for new, old in ((PG + "model.language_model.", PG + "language_model.model."),
                     (PG + "lm_head.", PG + "language_model.lm_head."),
                     (PG + "model.vision_tower.", PG + "vision_tower.vision_model."),
                     (PG + "model.multi_modal_projector.", PG + "multi_modal_projector.")):
        if key.startswith(new):
            return old + key.removeprefix(new)
    return key


def test_pi0_presets_cover_the_pre_4_52_paligemma_layout():
    """Same parts selected when the checkpoint predates transformers' PaliGemma `.model` nesting."""
    import re

    from capvector.selection import make_selection

    names = list(Policy("pi0").state_dict())
    for preset, pred in PI_EXPECTED.items():
        sel = make_selection(preset=f"pi0:{preset}")
        assert {_old_paligemma_layout(k) for k in names if pred(k)} == set(
            sel.filter([_old_paligemma_layout(k) for k in names])), preset
    modules = [n for n, m in Policy("pi0").named_modules() if isinstance(m, nn.Linear)]
    new = {n for n in modules if re.fullmatch(PI0.gse_target_modules, n)}
    old = {n for n in modules if re.fullmatch(PI0.gse_target_modules, _old_paligemma_layout(n + ".")[:-1])}
    assert new == old and new


def test_extract_and_merge_by_family_from_run_directories(tmp_path, pi0_runs):
    """Run dirs in (resolved through checkpoints/last), the family default preset (`vlm+expert`) applied."""
    from capvector.integrations import extract_family, merge_family
    from capvector.vectors import CapabilityVector

    pre, sft, aux = pi0_runs
    runs = [p.parents[2] for p in pi0_runs]  # <run>/checkpoints/000010/pretrained_model -> <run>
    vec = tmp_path / "vec"
    extract_family("pi0", runs[1], runs[2], vec, pretrained=runs[0], progress=False)
    want = check_preset_roundtrip(tmp_path, pre, sft, aux, "pi0:vlm+expert", PI_EXPECTED["vlm+expert"])
    assert CapabilityVector(vec).meta["selection"]["preset"] == "pi0:vlm+expert"
    out = tmp_path / "meta"
    merge_family("pi0", runs[0], [vec], out, progress=False)
    got = read_all(out)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(CapvectorError, match="has no preset 'language_model'"):
        extract_family("pi0", runs[1], runs[2], tmp_path / "v2", preset="language_model", progress=False)


def test_cli_extract_and_merge_with_a_family_preset(tmp_path, pi0_runs, monkeypatch):
    """`capvector extract --preset pi0:vlm+expert` and `merge`: the first call in a fresh process (the CLI itself
    registers the family presets), the rest in this one; `--family` resolves run directories and defaults to the
    family's preset."""
    import subprocess
    import sys

    from capvector.vectors import CapabilityVector
    from testing_common import run_cli

    pre, sft, aux = pi0_runs
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells at narrow widths

    def cli(*args) -> str:
        r = run_cli(*args)
        assert r.code == 0, r.stderr
        return r.stdout

    fresh = subprocess.run([sys.executable, "-m", "capvector.cli", "extract", "--sft", str(sft), "--aux", str(aux),
                            "--pretrained", str(pre), "-o", str(tmp_path / "v"), "--preset", "pi0:vlm+expert",
                            "--json"], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    out = json.loads(fresh.stdout)
    want = check_preset_roundtrip(tmp_path, pre, sft, aux, "pi0:vlm+expert", PI_EXPECTED["vlm+expert"])
    assert out["tensors"] == sum(1 for k in read_all(sft) if PI_EXPECTED["vlm+expert"](k))
    cli("merge", "--base", pre, "--vector", tmp_path / "v", "-o", tmp_path / "m", "--json")
    got = read_all(tmp_path / "m")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert "pi0:vlm+expert" in cli("presets")

    runs = [p.parents[2] for p in pi0_runs]  # run directories, resolved through checkpoints/last
    cli("extract", "--family", "pi0", "--sft", runs[1], "--aux", runs[2], "--pretrained", runs[0],
        "-o", tmp_path / "v2", "--no-hash")
    assert CapabilityVector(tmp_path / "v2").meta["selection"]["preset"] == "pi0:vlm+expert"
    assert sorted(CapabilityVector(tmp_path / "v2").names()) == sorted(CapabilityVector(tmp_path / "v").names())
    cli("merge", "--family", "pi0", "--base", runs[0], "--vector", tmp_path / "v2", "-o", tmp_path / "m2")
    got2 = read_all(tmp_path / "m2")
    assert sorted(got2) == sorted(got) and all(torch.equal(got2[k], got[k]) for k in got)
