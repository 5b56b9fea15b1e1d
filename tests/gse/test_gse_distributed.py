"""GSE with 2 CPU processes (gloo) under FSDP1 (flat parameters, our auto-wrap policy) and FSDP2: the same loss
curve (LM + load balancing over the global batch) and the same saved adapter as one process on the whole batch; the
adapter saved from a full state dict loads back with PEFT; the SVD initialisation can read a sharded weight whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from capvector import engines
from capvector.engines import gathered_weight
from capvector.errors import CapvectorError
from capvector.gse import GSEConfig
from capvector.gse.distributed import aux_loss_across_ranks, gse_fsdp_auto_wrap_policy, save_adapter
from testing_common import spawn_gloo

STEPS, LR = 3, 0.05
pytestmark = [pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo"),
              pytest.mark.long]


def _base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(cfg)


def _gse(base):
    from peft import get_peft_model

    cfg = GSEConfig(r=4, num_experts=4, top_k=2, dropout=0.0, aux_loss_weight=1.0,
                    target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(base, cfg)


def _batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))


def _train(model, ids: torch.Tensor, distributed: bool) -> dict:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    lms, auxes = [], []
    for _ in range(STEPS):
        lm = model(input_ids=ids, labels=ids).loss
        aux = aux_loss_across_ranks(model) if distributed else model.gse_aux_loss()
        opt.zero_grad()
        (lm + aux).backward()
        opt.step()
        lm = lm.detach()
        if distributed:
            dist.all_reduce(lm)
            lm /= dist.get_world_size()
        lms.append(lm.item())
        auxes.append(aux.item())
    return {"lm": lms, "aux": auxes}


def _decoder_layers(model) -> list:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return [m for m in model.modules() if isinstance(m, LlamaDecoderLayer)]


def _worker(rank: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    ids = _batch()[rank * 2 : rank * 2 + 2]
    results = {}
    # FSDP1, flat parameters: every unit must be all-trainable or all-frozen.
    model = _gse(_base())
    wrapped = FullyShardedDataParallel(model, auto_wrap_policy=gse_fsdp_auto_wrap_policy(model),
                                       use_orig_params=False, device_id=torch.device("cpu"))
    results["fsdp1"] = _train(wrapped, ids, distributed=True)
    try:
        save_adapter(wrapped, Path(out, "refused"))
    except CapvectorError as e:
        results["fsdp1_save_error"] = str(e)
    state = engines.full_state_dict(wrapped)  # the documented FSDP1 recipe: an unwrapped copy on rank 0
    if rank == 0:
        copy = _gse(_base())
        copy.load_state_dict(state)
        copy.save_pretrained(str(Path(out, "fsdp1")))
    # FSDP2.
    model = _gse(_base())
    for layer in _decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    results["fsdp2"] = _train(model, ids, distributed=True)
    save_adapter(model, Path(out, "fsdp2"))
    # The SVD initialisation's view of a sharded frozen weight is the whole weight.
    sharded = _base()
    fully_shard(sharded.model.layers[0])
    with gathered_weight(sharded.model.layers[0].self_attn.q_proj.weight) as w:
        results["gathered_sum"] = w.double().sum().item()
        results["gathered_shape"] = list(w.shape)
    Path(out, f"{rank}.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gse_engines")
    spawn_gloo(_worker, str(out), rendezvous=out / "rdzv")
    ranks = [json.loads((out / f"{r}.json").read_text()) for r in (0, 1)]
    model = _gse(_base())
    single = _train(model, _batch(), distributed=False)
    model.save_pretrained(str(out / "single"))
    return ranks, single, model, out


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp2"])
def test_two_processes_match_one(runs, engine):
    ranks, single, _, out = runs
    assert single["aux"][0] > 0
    for r in ranks:
        assert r[engine]["lm"] == pytest.approx(single["lm"], rel=1e-5)
        assert r[engine]["aux"] == pytest.approx(single["aux"], rel=1e-5)  # the global batch's Switch loss
    want, got = load_file(str(out / "single" / "adapter_model.safetensors")), \
        load_file(str(out / engine / "adapter_model.safetensors"))
    assert got.keys() == want.keys() and any("gse_router" in k for k in got)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_fsdp1_adapter_save_is_refused_not_empty(runs):
    assert all("FSDP1" in r["fsdp1_save_error"] for r in runs[0])


def test_adapter_saved_under_fsdp2_loads_back(runs):
    from peft import PeftModel

    _, _, trained, out = runs
    reloaded = PeftModel.from_pretrained(_base(), str(out / "fsdp2")).eval()
    trained.eval()
    ids = _batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-4,
                                   atol=1e-5)


def test_sharded_weight_is_read_whole(runs):
    w = _base().model.layers[0].self_attn.q_proj.weight
    for r in runs[0]:
        assert r["gathered_shape"] == list(w.shape)
        assert r["gathered_sum"] == pytest.approx(w.double().sum().item(), rel=1e-9)
