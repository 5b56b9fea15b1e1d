"""GSE through PEFT on a tiny random transformers model: init, save/load, disable, merge, state keys, counts."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from capvector.errors import CapvectorError
from capvector.gse import GSEConfig, GSELinear

LLAMA = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LLAMA).eval()


def token_ids() -> torch.Tensor:
    return torch.randint(0, LLAMA.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))


def perturb(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def reference_logits() -> torch.Tensor:
    with torch.no_grad():
        return tiny_llama()(token_ids()).logits


def test_get_peft_model_preserves_the_function(reference_logits: torch.Tensor) -> None:
    model = peft.get_peft_model(tiny_llama(), GSEConfig(r=10, num_experts=4)).eval()
    with torch.no_grad():
        out = model(token_ids()).logits
    assert (out - reference_logits).abs().max().item() <= 1e-5
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, GSELinear)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # no lm_head


def test_trainable_parameters_follow_the_count_formula() -> None:
    cfg = GSEConfig(r=10, num_experts=4, num_generalized_experts=1)
    model = peft.get_peft_model(tiny_llama(), cfg)
    expected = 0
    for _, m in model.named_modules():
        if isinstance(m, GSELinear):
            n, o = m.in_features, m.out_features
            expected += cfg.r * (n + o) + cfg.num_specialized_experts * n
    trainable, _ = model.get_nb_trainable_parameters()
    report = model.gse_trainable_report()
    assert trainable == expected == report["factors"] + report["router"]
    assert report["other_trainable"] == 0


def test_save_load_round_trip_and_config(tmp_path, reference_logits: torch.Tensor) -> None:
    cfg = GSEConfig(r=10, num_experts=4, top_k=2, scaling="gradient_balanced", init_coefficient=1.0)
    model = peft.get_peft_model(tiny_llama(), cfg)
    perturb(model, seed=1)
    model.eval()
    with torch.no_grad():
        trained = model(token_ids()).logits
    assert (trained - reference_logits).abs().max().item() > 1e-3
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "GSE" and saved["scaling"] == "gradient_balanced" and saved["r"] == 10
    state = load_file(tmp_path / "adapter_model.safetensors")
    assert all(".gse_" in k for k in state)
    # one stored tensor per parameter/anchor: no duplicated keys such as the reference's expert aliases
    kinds = {k.rsplit(".", 1)[-1] for k in state}
    assert kinds == {"gse_A", "gse_B", "gse_router", "gse_A0", "gse_B0", "gse_router0", "gse_scale"}
    layers = sum(isinstance(m, GSELinear) for m in model.modules())
    assert len(state) == 7 * layers
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert isinstance(loaded.peft_config["default"], GSEConfig)
    with torch.no_grad():
        assert torch.equal(loaded(token_ids()).logits, trained)


def test_disable_adapter_gives_the_base_model(reference_logits: torch.Tensor) -> None:
    model = peft.get_peft_model(tiny_llama(), GSEConfig(r=8, num_experts=4))
    perturb(model, seed=2)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(token_ids()).logits, reference_logits)
    with torch.no_grad():
        assert not torch.allclose(model(token_ids()).logits, reference_logits)


def test_merge_adapter_and_unload(reference_logits: torch.Tensor) -> None:
    model = peft.get_peft_model(tiny_llama(), GSEConfig(r=8, num_experts=4))
    perturb(model, seed=3)
    model.eval()
    with torch.no_grad():
        before = model(token_ids()).logits
        model.merge_adapter()
        assert (model(token_ids()).logits - before).abs().max().item() <= 1e-5
        model.unmerge_adapter()
        assert (model(token_ids()).logits - before).abs().max().item() <= 1e-5
    with pytest.raises(CapvectorError, match="routed"):
        model.merge_and_unload()
    model.merge_adapter()
    base = model.unload()  # undoes the merge, returns the original weights
    assert not any(isinstance(m, GSELinear) for m in base.modules())
    with torch.no_grad():
        assert (base(token_ids()).logits - reference_logits).abs().max().item() <= 1e-5


def test_aux_loss_is_weighted_sum_over_layers_and_reaches_the_trainer_seam() -> None:
    from capvector.train.trainer import tuner_aux_loss

    cfg = GSEConfig(r=8, num_experts=4, aux_loss_weight=0.5)
    model = peft.get_peft_model(tiny_llama(), cfg)
    model.train()
    out = model(token_ids())
    layers = [m for m in model.modules() if isinstance(m, GSELinear)]
    expected = 0.5 * sum(m.aux_loss("default") for m in layers)
    aux = tuner_aux_loss(model)
    assert aux is not None and torch.allclose(aux, expected)
    (out.logits.square().mean() + aux).backward()
    routers = [m.gse_router["default"] for m in layers]
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in routers)
    stats = model.gse_router_stats()
    assert len(stats) == len(layers)
    for s in stats.values():
        assert sum(s["load"]) == pytest.approx(1.0) and 0.0 <= s["entropy"] <= torch.log(torch.tensor(3.0)).item()


def test_training_step_moves_only_adapters() -> None:
    model = peft.get_peft_model(tiny_llama(), GSEConfig(r=8, num_experts=4, dropout=0.1))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    ids = token_ids()
    loss = model(ids, labels=ids).loss + model.gse_aux_loss()
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, trainable[n]), n


def test_bad_config_names_the_field() -> None:
    with pytest.raises(CapvectorError, match=r"GSEConfig\.top_k.*found 8"):
        GSEConfig(num_experts=8, num_generalized_experts=1, top_k=8)
    with pytest.raises(ValueError, match=r"GSEConfig\.r: expected ≥ num_experts=8"):
        GSEConfig(r=4)
    with pytest.raises(CapvectorError, match=r"GSEConfig\.num_generalized_experts"):
        GSEConfig(num_generalized_experts=8)
    with pytest.raises(CapvectorError, match=r"GSEConfig\.scaling.*'gsb'"):
        GSEConfig(scaling="gsb")
    with pytest.raises(CapvectorError, match=r"GSEConfig\.dropout"):
        GSEConfig(dropout=1.5)


class TwoBranch(torch.nn.Module):
    """A model whose second Linear runs only on request, like a vision tower on text-only batches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(16, 16)
        self.second = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, use_second: bool = True) -> torch.Tensor:
        x = self.first(x)
        return self.second(x) if use_second else x


def test_aux_loss_counts_only_layers_that_ran_in_the_last_forward() -> None:
    model = peft.get_peft_model(TwoBranch(), GSEConfig(r=8, num_experts=4, target_modules=["first", "second"],
                                                       aux_loss_weight=1.0))
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    model(x, use_second=True)
    first, second = model.base_model.model.first, model.base_model.model.second
    assert torch.allclose(model.gse_aux_loss(), first.aux_loss("default") + second.aux_loss("default"))
    model(x, use_second=False)  # the second layer's routing from the previous forward is stale now
    assert second.aux_loss("default") is None
    assert torch.allclose(model.gse_aux_loss(), first.aux_loss("default"))
    assert set(model.gse_router_stats()) == {"first"}


def test_non_linear_targets_are_refused_and_small_layers_skipped() -> None:
    with pytest.raises(CapvectorError, match=r"GSEConfig\.target_modules: expected torch\.nn\.Linear.*Embedding"):
        peft.get_peft_model(tiny_llama(), GSEConfig(r=8, num_experts=4, target_modules=["embed_tokens"]))

    class Narrow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wide = torch.nn.Linear(16, 16)
            self.narrow = torch.nn.Linear(16, 4)  # min(out, in) = 4 < r = 8: left as it is

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.narrow(self.wide(x))

    model = peft.get_peft_model(Narrow(), GSEConfig(r=8, num_experts=4, target_modules=["wide", "narrow"]))
    assert isinstance(model.base_model.model.wide, GSELinear)
    assert type(model.base_model.model.narrow) is torch.nn.Linear


def test_two_named_adapters_switch_and_delete(reference_logits: torch.Tensor) -> None:
    model = peft.get_peft_model(tiny_llama(), GSEConfig(r=8, num_experts=4))
    perturb(model, seed=6)
    model.add_adapter("other", GSEConfig(r=12, num_experts=3, num_generalized_experts=0, top_k=1))
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"default"}  # a newly added adapter is not trainable until selected
    model.eval()
    with torch.no_grad():
        first = model(token_ids()).logits
        model.set_adapter("other")  # fresh adapter: exactly the base model again
        assert (model(token_ids()).logits - reference_logits).abs().max().item() <= 1e-5
        model.delete_adapter("default")
        model.set_adapter("other")
        assert not torch.allclose(first, model(token_ids()).logits)
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if "gse_" in n} == {"other"}


@pytest.mark.parametrize("autocast", [True, False])
def test_adapter_dtype_on_a_bf16_base_follows_lora(autocast: bool) -> None:
    """`autocast_adapter_dtype` means for GSE what it means for PEFT's LoRA in the same setup."""
    lora = peft.get_peft_model(tiny_llama().to(torch.bfloat16), peft.LoraConfig(r=8, target_modules="all-linear"),
                               autocast_adapter_dtype=autocast)
    lora_dtypes = {p.dtype for n, p in lora.named_parameters() if "lora_" in n}
    gse = peft.get_peft_model(tiny_llama().to(torch.bfloat16), GSEConfig(r=8, num_experts=4),
                              autocast_adapter_dtype=autocast)
    gse_dtypes = {p.dtype for n, p in gse.named_parameters() if "gse_" in n}
    anchor_dtypes = {b.dtype for n, b in gse.named_buffers() if "gse_" in n}
    assert lora_dtypes == {torch.float32 if autocast else torch.bfloat16}
    assert gse_dtypes == anchor_dtypes == lora_dtypes
    ids = token_ids()
    with torch.no_grad():
        base_logits = tiny_llama().to(torch.bfloat16)(ids).logits
        assert gse(ids).logits.dtype == torch.bfloat16
        # factors and anchors are cast alike from fp32, so the adapter still starts at zero
        assert torch.equal(gse(ids).logits, base_logits)


def test_mixed_adapter_batches_are_refused() -> None:
    model = peft.get_peft_model(tiny_llama(), GSEConfig(r=8, num_experts=4))
    ids = token_ids()
    with pytest.raises(CapvectorError, match="mixed-adapter batches"):
        model(ids, adapter_names=["default", "default"])
    model(ids)  # a plain forward still works after the refusal
