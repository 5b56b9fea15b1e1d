"""Fails loudly when PEFT changes what `capvector.gse._peft_compat` relies on (enum member + registries)."""

from __future__ import annotations

import peft
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType

import capvector.gse as gse
from capvector.gse import _peft_compat


def test_installed_peft_is_in_the_tested_range() -> None:
    low, high = _peft_compat.TESTED_PEFT
    assert low <= _peft_compat.peft_version() < high, (
        f"peft {peft.__version__} is outside the range capvector.gse._peft_compat was written against "
        f"{low}..{high}: re-check PeftType extension and register_peft_method, then widen TESTED_PEFT")


def test_gse_is_a_real_peft_type_member() -> None:
    member = PeftType.GSE
    assert member is gse.PEFT_TYPE
    assert member == "GSE" and member.value == "GSE" and member.name == "GSE"
    assert PeftType("GSE") is member and PeftType["GSE"] is member
    assert member in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING["GSE"] is gse.GSEConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is gse.GSEModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == "gse_" == gse.GSEModel.prefix


def test_registration_is_idempotent() -> None:
    assert _peft_compat.register(gse.GSEConfig, gse.GSEModel) is PeftType.GSE
    assert _peft_compat.peft_type_member() is PeftType.GSE
    assert list(PeftType).count(PeftType.GSE) == 1


def test_peft_resolves_the_config_class_from_its_type_name() -> None:
    cfg = PeftConfig.from_peft_type(peft_type="GSE", r=12, num_experts=4)
    assert isinstance(cfg, gse.GSEConfig) and cfg.r == 12 and cfg.peft_type is PeftType.GSE
