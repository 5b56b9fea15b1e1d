"""Tiny VLA: shapes, masking, parameter groups, act(), save/load round trip, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capvector.errors import CapvectorError
from capvector.policy import POLICY_PRESETS, TinyVLA, action_l1, load_policy, save_policy
from capvector.selection import make_selection
from capvector.train import SyntheticDemoDataset
from testing_common import batch_of, small_config


def _inputs(model: TinyVLA, batch: dict):
    return batch["image"], batch["proprio"], model.embed_instructions(batch["instruction"])


@pytest.mark.parametrize("cameras", [1, 2])
def test_forward_shapes_and_hidden_layer(cameras):
    torch.manual_seed(0)
    cfg = small_config(num_cameras=cameras)
    model = TinyVLA(cfg).eval()
    ds = SyntheticDemoDataset(length=8, num_cameras=cameras, chunk=cfg.chunk)
    batch = batch_of(ds, [0, 1, 2])
    out = model(*_inputs(model, batch), hidden_layer=1)
    assert out.actions.shape == (3, cfg.chunk, 4)
    assert out.visual_hidden.shape == (3, cameras * 64, cfg.width)
    assert model(*_inputs(model, batch)).visual_hidden is None
    # hidden_layer 0 is the token embedding itself: the vision encoder's output.
    emb = model.vlm.vision(batch["image"].float() / 255)
    torch.testing.assert_close(model(*_inputs(model, batch), hidden_layer=0).visual_hidden, emb)


def test_action_l1_masking_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    direct = sum((pred[b, k] - target[b, k]).abs().sum() for b in range(3) for k in range(5) if mask[b, k])
    assert torch.allclose(action_l1(pred, target, mask), direct / (int(mask.sum()) * 4))
    # Changing a padded target must not change the loss.
    t2 = target.clone()
    t2[0, 4] += 100.0
    assert torch.equal(action_l1(pred, t2, mask), action_l1(pred, target, mask))
    assert torch.allclose(action_l1(pred, target), (pred - target).abs().mean())


def test_parameter_groups_select_by_preset(tiny_cfg):
    names = [n for n, _ in TinyVLA(tiny_cfg).named_parameters()]
    vlm = make_selection(include=POLICY_PRESETS["vlm"]).filter(names)
    expert = make_selection(include=POLICY_PRESETS["action_expert"]).filter(names)
    assert vlm and expert and set(vlm).isdisjoint(expert) and set(vlm) | set(expert) == set(names)
    assert all(n.startswith(("vlm.vision", "vlm.language", "vlm.trunk")) for n in vlm)
    assert "action_expert.queries" in expert and "action_expert.head_fc2.weight" in expert
    # The same globs still match under a PEFT wrapper prefix.
    assert make_selection(preset="tiny-vla:vlm").filter(names) == vlm
    assert make_selection(preset="vlm").filter(names) == vlm
    wrapped = "base_model.model.vlm.trunk.layers.0.attn.q_proj.weight"
    assert make_selection(include=POLICY_PRESETS["vlm"]).matches(wrapped)


def test_act_contract(tiny_cfg, tiny_ds):
    torch.manual_seed(0)
    model = TinyVLA(tiny_cfg)
    s = tiny_ds[0]
    obs = {"image": s["image"].numpy(), "proprio": s["proprio"].numpy(), "instruction": s["instruction"]}
    a = model.act(obs)
    assert a.shape == (tiny_cfg.chunk, 4) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    batched = model.eval()(s["image"][None], s["proprio"][None], model.embed_instructions([s["instruction"]]))
    np.testing.assert_allclose(a, batched.actions[0].clamp(-1, 1).detach().numpy(), rtol=0, atol=1e-6)
    with pytest.raises(CapvectorError, match="missing key 'instruction'"):
        model.act({"image": obs["image"], "proprio": obs["proprio"]})


def test_bad_input_shapes_name_the_key(tiny_cfg):
    model = TinyVLA(tiny_cfg)
    text = model.embed_instructions(["reach"])
    with pytest.raises(CapvectorError, match=r"'image'.*\(B, 1, 3, 64, 64\).*\(1, 3, 32, 32\)"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 4), text)
    with pytest.raises(CapvectorError, match="'proprio'"):
        model(torch.zeros(1, 1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 7), text)


def test_save_load_round_trip(tmp_path, tiny_cfg, tiny_ds):
    torch.manual_seed(1)
    model = TinyVLA(tiny_cfg).eval()
    save_policy(model, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["width"] == tiny_cfg.width
    loaded = load_policy(tmp_path / "p")
    assert loaded.config == tiny_cfg
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b)
    batch = batch_of(tiny_ds, [0, 5])
    torch.testing.assert_close(model(*_inputs(model, batch)).actions, loaded(*_inputs(loaded, batch)).actions,
                               rtol=0, atol=0)
    # The hub mixin's API reads and writes the same layout.
    model.save_pretrained(tmp_path / "hub")
    again = TinyVLA.from_pretrained(str(tmp_path / "hub"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert not [p.name for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]  # no temporary left


def test_load_rejects_mismatched_weights(tmp_path, tiny_cfg):
    save_policy(TinyVLA(tiny_cfg), tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    cfg["width"] = 64
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CapvectorError, match="model.safetensors.*shape"):
        load_policy(tmp_path / "p")
    with pytest.raises(CapvectorError, match="missing config.json"):
        load_policy(tmp_path / "nowhere")


def test_implements_the_evaluator_policy_interface(tiny_cfg, tiny_ds):
    from capvector.sim.policy_api import Policy

    model = TinyVLA(tiny_cfg)
    assert isinstance(model, Policy)
    s = tiny_ds[0]
    obs = {"image": s["image"].numpy(), "proprio": s["proprio"].numpy(), "instruction": s["instruction"],
           "task": s["task"]}
    first = model.act(obs)
    model.reset()
    np.testing.assert_array_equal(model.act(obs), first)
