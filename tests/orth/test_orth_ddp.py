"""DDP with 2 CPU processes (gloo) gives the same regulariser value and update as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from capvector.orth import OrthogonalRegularizer
from testing_common import spawn_gloo


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(cfg)


def _batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))


def _train(model, module, vec_dir: str, ids: torch.Tensor) -> dict:
    """Two SGD steps of LM loss + regulariser; the regulariser's value after each step."""
    reg = OrthogonalRegularizer.from_vector(model, vec_dir, weight=1.0, mode="factored", rank=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    values = []
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss + reg()
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(reg().item())
    w = module.model.layers[0].self_attn.q_proj.weight
    return {"reg": values, "w": w.detach().double().sum().item()}


def _worker(rank: int, vec_dir: str, out: str) -> None:
    module = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(module)
    result = _train(ddp, module, vec_dir, _batch()[rank * 2 : rank * 2 + 2])  # equal halves of the batch
    Path(out, f"{rank}.json").write_text(json.dumps(result))


@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")
def test_ddp_two_processes_match_one(dense_vector, tmp_path):
    spawn_gloo(_worker, str(dense_vector), str(tmp_path), rendezvous=tmp_path / "rdzv")
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    module = _model()
    single = _train(module, module, str(dense_vector), _batch())
    assert single["reg"][0] > 0
    for r in ranks:
        assert r["reg"] == pytest.approx(single["reg"], rel=1e-4)
        assert r["w"] == pytest.approx(single["w"], rel=1e-5)
