"""The regulariser under DDP, FSDP2 and FSDP1 with 2 CPU processes (gloo): the same values, loss curve and weights
as one process, and clear errors where it would otherwise regularise tensors the training no longer uses.

One spawn runs every scenario (process start and imports dominate the cost); one process without sharding on the
whole batch is the reference.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from capvector.errors import CapvectorError
from capvector.orth import OrthogonalRegularizer
from testing_common import spawn_gloo

STEPS, LR = 3, 0.05
pytestmark = [pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo"),
              pytest.mark.long]


def _llama(lora: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    return model


def _batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))


def _layers(model) -> list:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return [m for m in model.modules() if isinstance(m, LlamaDecoderLayer)]


def _fsdp2(model):
    from torch.distributed.fsdp import fully_shard

    for layer in _layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp1(model, use_orig_params: bool = True):
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
    return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=use_orig_params,
                                    device_id=torch.device("cpu"))


def _full_state(model) -> dict[str, torch.Tensor]:
    """Whole fp32 weights under their plain names, whatever the engine."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k.replace("_fsdp_wrapped_module.", ""): v.detach().float().clone() for k, v in state.items()}


def _train(model, reg: OrthogonalRegularizer, ids: torch.Tensor, reduce: bool) -> dict:
    """SGD steps on LM loss + regulariser: per step the (global) LM loss and regulariser value."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    reg.expect_updates_by(opt)
    losses, regs = [], []
    for _ in range(STEPS):
        lm = model(input_ids=ids, labels=ids).loss
        value = reg()
        opt.zero_grad()
        (lm + value).backward()
        opt.step()
        lm = lm.detach()
        if reduce:
            dist.all_reduce(lm)
            lm /= dist.get_world_size()
        losses.append(lm.item())
        regs.append(value.item())
    return {"lm": losses, "reg": regs}


def _scenario(name: str, vec: str, ids: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    lora = name.endswith("lora")
    mode = "lora" if lora else "factored"
    model = _llama(lora)
    if name == "ddp":  # gradients all-reduced, every rank holds the whole weights
        model = torch.nn.parallel.DistributedDataParallel(model)
        reg = OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode=mode, rank=4)
    elif name == "fsdp2_built_before":  # the regulariser that used to see stale Parameters and stay at 0.0
        reg = OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode=mode, rank=4)
        _fsdp2(model)
    else:
        model = _fsdp1(model) if name.startswith("fsdp1") else _fsdp2(model)
        reg = OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode=mode, rank=4)
    result = _train(model, reg, ids, reduce=True)
    return result, _full_state(model)


def _errors(vec: str, ids: torch.Tensor) -> dict[str, str]:
    """The message each misuse raises (or 'no error')."""
    out = {}

    def attempt(key, fn):
        try:
            fn()
            out[key] = "no error"
        except CapvectorError as e:
            out[key] = str(e)

    # FSDP1 wraps after the regulariser was built: the names it holds now point at flat shards.
    model = _llama(False)
    reg = OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode="factored", rank=4)
    wrapped = _fsdp1(model)
    wrapped(input_ids=ids, labels=ids)
    attempt("fsdp1_built_before", reg)
    # The optimiser was built before fully_shard: it steps tensors the model no longer uses.
    model = _llama(False)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    _fsdp2(model)
    reg = OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode="factored", rank=4)
    attempt("stale_optimizer", lambda: reg.expect_updates_by(opt))
    # FSDP1 flat parameters mix the rows of many weights.
    attempt("fsdp1_flat", lambda: OrthogonalRegularizer.from_vector(_fsdp1(_llama(False), use_orig_params=False),
                                                                       vec, mode="factored"))
    # FSDP1: called without a forward pass first.
    model = _fsdp1(_llama(False))
    attempt("fsdp1_no_forward", OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode="factored", rank=4))
    return out


SCENARIOS = {"ddp": "dense", "fsdp2": "dense", "fsdp2_built_before": "dense", "fsdp1": "dense", "fsdp2_lora": "lora",
             "fsdp1_lora": "lora"}


def _worker(rank: int, vectors: dict[str, str], out: str) -> None:
    ids = _batch()[rank * 2 : rank * 2 + 2]  # equal halves of the batch
    results = {}
    for name, vec in SCENARIOS.items():
        results[name], state = _scenario(name, vectors[vec], ids)
        if rank == 0:
            save_file(state, str(Path(out, f"{name}.safetensors")))
    results["errors"] = _errors(vectors["dense"], ids)
    Path(out, f"{rank}.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(dense_vector, factored_vector, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    vectors = {"dense": str(dense_vector), "lora": str(factored_vector)}
    spawn_gloo(_worker, vectors, str(out), rendezvous=out / "rdzv")
    ranks = [json.loads((out / f"{r}.json").read_text()) for r in (0, 1)]
    single = {}
    for kind, vec in vectors.items():
        model = _llama(kind == "lora")
        reg = OrthogonalRegularizer.from_vector(model, vec, weight=1.0, mode="factored" if kind == "dense" else "lora",
                                                rank=4)
        single[kind] = (_train(model, reg, _batch(), reduce=False), _full_state(model))
        plain = _llama(kind == "lora")
        zero = OrthogonalRegularizer.from_vector(plain, vec, weight=0.0, mode="factored" if kind == "dense" else "lora",
                                                 rank=4)
        _train(plain, zero, _batch(), reduce=False)
        single[f"{kind}_unregularised"] = _full_state(plain)
    return ranks, single, out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_match_one(runs, name):
    ranks, single, out = runs
    ref, ref_state = single[SCENARIOS[name]]
    assert ref["reg"][1] > 1e-3  # (the factored form is 0 before the first step: Δ = 0)
    for r in ranks:
        assert r[name]["reg"] == pytest.approx(ref["reg"], rel=1e-4)
        assert r[name]["lm"] == pytest.approx(ref["lm"], rel=1e-5)
    state = load_file(str(out / f"{name}.safetensors"))
    unreg = single[f"{SCENARIOS[name]}_unregularised"]
    # Weights after STEPS SGD steps equal the single process's: the regulariser's gradient is the same, and it
    # matters (without it the weights differ).
    moved = [k for k in ref_state if not torch.allclose(ref_state[k], unreg[k], atol=1e-6)]
    assert moved
    for k, v in ref_state.items():
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_misuse_raises_clearly(runs):
    errors = runs[0][0]["errors"]
    assert "not the whole weight" in errors["fsdp1_built_before"]
    assert "build the regulariser from the model that is trained" in errors["fsdp1_built_before"]
    assert "not among the tensors the optimiser updates" in errors["stale_optimizer"]
    assert "use_orig_params=True" in errors["fsdp1_flat"]
    assert "after each training forward" in errors["fsdp1_no_forward"]


def test_zero3_partitioned_parameters_refused(make_llama, dense_vector):
    """DeepSpeed ZeRO-3 marks its partitioned parameters with `ds_status`; they hold no whole weight."""
    model = make_llama(0)
    model.model.layers[0].mlp.up_proj.weight.ds_status = "NOT_AVAILABLE"
    with pytest.raises(CapvectorError, match="ZeRO-3"):
        OrthogonalRegularizer.from_vector(model, dense_vector)
