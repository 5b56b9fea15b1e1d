"""GSEConfig: rank split invariants (property-based), validation messages, JSON round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.config import PeftConfig

from capvector.gse import GSEConfig, GSEConfigError, rank_split


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 64), st.integers(1, 512))
def test_rank_split_is_contiguous_balanced_and_leading_heavy(experts: int, extra: int) -> None:
    r = experts + extra - 1  # r ≥ E
    ranks = rank_split(r, experts)
    assert sum(ranks) == r and len(ranks) == experts
    assert min(ranks) >= 1 and max(ranks) - min(ranks) <= 1
    assert ranks == sorted(ranks, reverse=True)  # the extra ranks go to the leading (generalized first) experts


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"r": 0}, "r"), ({"num_experts": 0}, "num_experts"), ({"num_generalized_experts": -1}, "num_generalized_experts"),
    ({"top_k": 0}, "top_k"), ({"eta": 0.0}, "eta"), ({"rho": -1.0}, "rho"),
    ({"aux_loss_weight": -0.1}, "aux_loss_weight"),
    ({"svd_niter": -1}, "svd_niter"), ({"target_modules": None}, "target_modules"),
    ({"target_parameters": ["weight"]}, "target_parameters"), ({"num_experts": True}, "num_experts"),
    ({"init_type": "gse"}, "init_type"), ({"dropout_mask": "per_rank"}, "dropout_mask"),
    ({"init_type": "lora", "scaling": "gradient_balanced"}, "scaling"),
])
def test_invalid_fields_are_named(kwargs: dict, field: str) -> None:
    with pytest.raises(GSEConfigError, match=rf"GSEConfig\.{field}: expected .*, found"):
        GSEConfig(**kwargs)


def test_config_survives_the_json_round_trip(tmp_path) -> None:
    cfg = GSEConfig(r=12, num_experts=5, num_generalized_experts=2, top_k=3, dropout=0.1, eta=0.5, rho=4.0,
                    init_coefficient=0.5, aux_loss_weight=0.02, scaling="gradient_balanced", scaling_base=3.0,
                    svd_niter=3, svd_seed=7, target_modules=["q_proj", "v_proj"], init_type="mgse",
                    dropout_mask="per_expert")
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["peft_type"] == "GSE" and sorted(raw["target_modules"]) == ["q_proj", "v_proj"]
    assert raw["init_type"] == "mgse" and raw["dropout_mask"] == "per_expert"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, GSEConfig)
    assert loaded.to_dict() == cfg.to_dict()
