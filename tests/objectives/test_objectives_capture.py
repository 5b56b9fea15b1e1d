"""LayerCapture: a hooked decoder layer's output equals transformers' own hidden states, keeps its graph, and the
tiny VLA's `hidden_layer` agrees with a hook on its block."""

from __future__ import annotations

import pytest
import torch

from capvector.errors import CapvectorError
from capvector.objectives import LayerCapture, SpatialAlignment
from capvector.policy import TinyVLA
from capvector.train import SyntheticDemoDataset
from testing_common import batch_of, small_config


def test_capture_matches_hf_hidden_states_and_backpropagates():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
    ids = torch.randint(0, 64, (2, 10))
    with LayerCapture(model, "layers.1") as cap:
        out = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(cap.hidden, out.hidden_states[2])  # hidden_states[0] is the embedding output
    align = SpatialAlignment(32, 5, layer=2)
    loss = align(cap.hidden[:, 2:6], torch.randn(2, 4, 5))
    loss.backward()
    assert model.layers[0].mlp.up_proj.weight.grad is not None
    assert model.layers[2].mlp.up_proj.weight.grad is None  # later layers are not on the alignment path
    model(input_ids=ids)  # the hook is gone after the block
    with pytest.raises(CapvectorError, match="no module named 'layers.9'"):
        LayerCapture(model, "layers.9")


def test_capture_agrees_with_tiny_vla_hidden_layer():
    torch.manual_seed(0)
    cfg = small_config()
    policy = TinyVLA(cfg).eval()
    batch = batch_of(SyntheticDemoDataset(length=4, chunk=cfg.chunk), [0, 1])
    text = policy.embed_instructions(batch["instruction"])
    with LayerCapture(policy, "vlm.trunk.layers.1") as cap:
        out = policy(batch["image"], batch["proprio"], text, hidden_layer=2)
    torch.testing.assert_close(cap.hidden[:, : cfg.num_visual_tokens], out.visual_hidden, rtol=0, atol=0)
