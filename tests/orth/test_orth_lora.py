"""LoRA form on a tiny PEFT LoRA Llama, PEFT name mapping, dense and factored vectors."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from capvector.orth import OrthogonalRegularizer
from capvector.vectors import CapabilityVector


def _lora_model(make_llama, targets=("q_proj", "v_proj"), r=4):
    return get_peft_model(make_llama(0), LoraConfig(r=r, lora_alpha=8, target_modules=list(targets)))


def _reference_lora(model, vec_dir, k: int, weight: float) -> tuple[float, int]:
    """λ Σ_modules Σ_ij |(V_kᵀ A_newᵀ)_ij|, V_k the top-k right singular vectors of dense C (float64)."""
    vec = CapabilityVector(vec_dir)
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if ".lora_A." not in name:
            continue
        base = name.removeprefix("base_model.model.").split(".lora_A.")[0] + ".weight"
        _, _, vh = torch.linalg.svd(vec.dense(base).double())
        total += (vh[:k] @ p.detach().double().T).abs().sum().item()
        count += 1
    return weight * total, count


@pytest.mark.parametrize("which", ["dense_vector", "factored_vector"])
def test_lora_form_matches_reference(make_llama, which, request):
    vec_dir = request.getfixturevalue(which)
    vec = CapabilityVector(vec_dir)
    assert vec.is_factored("model.layers.0.self_attn.q_proj.weight") == (which == "factored_vector")
    model = _lora_model(make_llama)
    reg = OrthogonalRegularizer.from_vector(model, vec_dir, mode="lora", rank=2, weight=1e-2)
    expected, count = _reference_lora(model, vec_dir, 2, 1e-2)
    assert count == 4 and len(reg.terms) == 4
    assert {t.key for t in reg.terms} == {f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in "qv"}
    value = reg()
    assert expected > 0 and value.item() == pytest.approx(expected, rel=1e-4)
    value.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_A." in n)
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_B." in n)


def test_lora_form_zero_for_orthogonal_A(make_llama, factored_vector):
    """C from r=2 adapters has rank ≤ 2 on a 16-wide input: an A in the complement gives exactly no penalty."""
    model = _lora_model(make_llama, targets=("q_proj",))
    reg = OrthogonalRegularizer.from_vector(model, factored_vector, mode="lora", rank=2, weight=1.0)
    vec = CapabilityVector(factored_vector)
    before = reg().item()
    with torch.no_grad():
        for t in reg.terms:
            _, _, vh = torch.linalg.svd(vec.dense(t.key).double())
            param = model.get_parameter(t.name)
            a = param.double()
            param.copy_((a - a @ vh[:2].T @ vh[:2]).float())  # project A's rows off C's row space
    assert before > 1e-2 and reg().item() < 1e-6 * before


def test_peft_base_layer_names_map_to_vector(make_llama, dense_vector):
    """Full fine-tuning of a PEFT-wrapped model: `.base_layer.` weights find their vector keys."""
    plain = make_llama(0)
    wrapped = _lora_model(make_llama)
    for n, p in wrapped.named_parameters():
        p.requires_grad_("q_proj" in n and "lora_" not in n)
    reg_w = OrthogonalRegularizer.from_vector(wrapped, dense_vector, mode="exact", include=["*q_proj*"])
    reg_p = OrthogonalRegularizer.from_vector(plain, dense_vector, mode="exact", include=["*q_proj*"])
    assert [t.key for t in reg_w.terms] == [t.key for t in reg_p.terms] and len(reg_w.terms) == 2
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p, q in zip(
            [p for p in wrapped.parameters() if p.requires_grad],
            [p for n, p in plain.named_parameters() if "q_proj" in n], strict=True,
        ):
            noise = 0.05 * torch.randn(p.shape, generator=gen)
            p.add_(noise)
            q.add_(noise)
    assert reg_w().item() == pytest.approx(reg_p().item(), rel=1e-6) and reg_p().item() > 0
