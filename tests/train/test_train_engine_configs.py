"""The accelerate config files in docs/accelerate parse as the engines they are named for, and asking for FSDP or
DeepSpeed where accelerate sets up something else (every CPU-only machine) is refused, not silently run as DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from capvector.engines import check_requested_engine
from capvector.errors import CapvectorError

CONFIGS = Path(__file__).resolve().parents[2] / "docs" / "accelerate"
EXPECTED = {"ddp.yaml": ("MULTI_GPU", None), "fsdp1.yaml": ("FSDP", 1), "fsdp2.yaml": ("FSDP", 2),
            "fsdp2_multinode.yaml": ("FSDP", 2), "deepspeed_zero2.yaml": ("DEEPSPEED", None)}


def test_every_config_is_listed_and_parses_as_its_engine():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    for name, (engine, fsdp_version) in EXPECTED.items():
        cfg = ClusterConfig.from_yaml_file(str(CONFIGS / name))
        assert str(cfg.distributed_type).split(".")[-1] == engine, name
        if fsdp_version is not None:
            assert int(cfg.fsdp_config["fsdp_version"]) == fsdp_version
            if fsdp_version == 1:  # the regulariser needs the original parameters under FSDP1
                assert cfg.fsdp_config["fsdp_use_orig_params"] is True
    ds = ClusterConfig.from_yaml_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert ds.deepspeed_config["zero_stage"] == 2


@pytest.mark.parametrize("env,asked", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")])
def test_engine_asked_for_must_be_the_one_running(monkeypatch, env, asked):
    monkeypatch.setenv(env, "true")  # what `accelerate launch --config_file <fsdp or deepspeed yaml>` exports
    for running in ("DistributedType.NO", "DistributedType.MULTI_CPU", "DistributedType.MULTI_GPU"):
        with pytest.raises(CapvectorError, match=f"asks for {asked}"):
            check_requested_engine(running)
    check_requested_engine(f"DistributedType.{asked}")
    monkeypatch.setenv(env, "false")
    check_requested_engine("DistributedType.MULTI_CPU")
