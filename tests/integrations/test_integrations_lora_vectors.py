"""Every miniature × the three ways to extract a vector from LoRA fine-tunes, each merged into θ_pre.

Two seeded LoRA "runs" (PEFT adapters on the family's default GSE/LoRA target modules) stand in for θ_sft and
θ_aux. The vector is extracted factored from the adapters, dense from the adapters, and dense from the
LoRA-merged models; every merge must equal θ_pre + s·(B_aux A_aux − B_sft A_sft), computed here from the
adapter files, on the adapted weights, and leave every other tensor as it was.
"""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from integ_helpers import read_all
from safetensors.torch import save_file
from test_integrations_gse import CASES
from torch import nn

import capvector
from capvector.vectors import CapabilityVector

RANK, ALPHA = 4, 8


def _save(model: nn.Module, path: Path) -> Path:
    path.mkdir(parents=True)
    # clone: tied tensors (lm_head / embed_tokens) may not share storage in a safetensors file
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(path / "model.safetensors"))
    return path


def _lora_run(make, pre: nn.Module, targets: str, seed: int, root: Path) -> tuple[Path, Path]:
    """(adapter dir, LoRA-merged model dir) of one fine-tune whose trained factors are seeded noise."""
    model = make()
    model.load_state_dict(pre.state_dict())
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    wrapped.save_pretrained(root / "adapter")
    return root / "adapter", _save(wrapped.merge_and_unload(), root / "merged")


def _lora_delta(adapter: Path) -> dict[str, torch.Tensor]:
    """s·B·A per adapted weight, by the base model's parameter name, read straight from the adapter file."""
    t = read_all(adapter / "adapter_model.safetensors")
    out = {}
    for key, a in t.items():
        if ".lora_A." in key:
            b = t[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            out[name] = (ALPHA / RANK) * (b.double() @ a.double())
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_factored_and_dense_vectors_from_lora_runs_merge_to_the_same_weights(tmp_path, name):
    family, make = CASES[name]
    torch.manual_seed(0)
    pre = make()
    pre_dir = _save(pre, tmp_path / "pre")
    sft_adapter, sft_merged = _lora_run(make, pre, family.gse_target_modules, 1, tmp_path / "sft")
    aux_adapter, aux_merged = _lora_run(make, pre, family.gse_target_modules, 2, tmp_path / "aux")
    d_sft, d_aux = _lora_delta(sft_adapter), _lora_delta(aux_adapter)
    assert d_sft and d_sft.keys() == d_aux.keys()
    base = read_all(pre_dir)
    want = {k: (v.double() + d_aux[k] - d_sft[k]).float() if k in d_sft else v for k, v in base.items()}

    routes = {"factored": (sft_adapter, aux_adapter, "factored"), "dense": (sft_adapter, aux_adapter, "dense"),
              "merged-models": (sft_merged, aux_merged, "factored")}
    for route, (sft, aux, storage) in routes.items():
        vec, out = tmp_path / f"vec-{route}", tmp_path / f"out-{route}"
        capvector.extract(sft, aux, vec, lora_storage=storage, progress=False, hash_sources=False)
        stored = {CapabilityVector(vec).tensors[k]["storage"] for k in d_sft}
        assert stored == ({"factored"} if route == "factored" else {"dense"}), route
        capvector.merge(pre_dir, [capvector.VectorWeight(vec, 1.0)], out, progress=False)
        got = read_all(out)
        assert got.keys() == base.keys(), route
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=f"{name} {route} {k}")
