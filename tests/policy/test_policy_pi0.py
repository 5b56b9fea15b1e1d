"""Tiny pi0: shapes, the flow-matching loss and sampler against direct formulas, act() determinism, save/load,
parameter groups (and their correspondence with LeRobot pi0's presets), overfitting a fixed batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capvector.errors import CapvectorError
from capvector.policy import (
    PI0_PRESETS,
    Pi0Config,
    TinyPi0,
    TinyVLA,
    flow_matching_loss,
    load_policy,
    read_policy_config,
    save_policy,
)
from capvector.policy.pi0 import sample_time
from capvector.selection import make_selection
from capvector.train import SyntheticDemoDataset
from testing_common import batch_of


def pi0_config(**sizes: object) -> Pi0Config:
    return Pi0Config(**{**dict(width=32, depth=2, heads=2, embedder="hash", chunk=4, expert_width=16,
                               expert_depth=2, flow_steps=5), **sizes})


def _inputs(model: TinyPi0, batch: dict):
    return batch["image"], batch["proprio"], model.embed_instructions(batch["instruction"])


def _obs(sample: dict) -> dict:
    return {"image": sample["image"].numpy(), "proprio": sample["proprio"].numpy(),
            "instruction": sample["instruction"]}


@pytest.mark.parametrize("cameras", [1, 2])
def test_shapes_and_hidden_layer(cameras):
    torch.manual_seed(0)
    cfg = pi0_config(num_cameras=cameras)
    model = TinyPi0(cfg).eval()
    batch = batch_of(SyntheticDemoDataset(length=8, num_cameras=cameras, chunk=4), [0, 1, 2])
    x, t = torch.randn(3, 4, 4), torch.rand(3)
    out = model(*_inputs(model, batch), x, t, hidden_layer=1)
    assert out.velocity.shape == (3, 4, 4)
    assert out.visual_hidden.shape == (3, cameras * 64, cfg.width) and out.query_hidden is None
    assert model(*_inputs(model, batch), x, t).visual_hidden is None
    emb = model.vlm.vision(batch["image"].float() / 255)
    torch.testing.assert_close(model(*_inputs(model, batch), x, t, hidden_layer=0).visual_hidden, emb)
    assert model.sample_actions(*_inputs(model, batch)).shape == (3, 4, 4)


@torch.no_grad()
def test_flow_matching_loss_matches_direct_formula(tiny_ds):
    torch.manual_seed(0)
    model = TinyPi0(pi0_config())
    batch = batch_of(tiny_ds, [0, 9, 20])
    image, proprio, text = _inputs(model, batch)
    a = batch["actions"]
    g = torch.Generator().manual_seed(1)
    noise, time = torch.randn(a.shape, generator=g), torch.tensor([0.9, 0.25, 0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    name, loss, _ = flow_matching_loss(model, image, proprio, text, a, mask, None, None, noise=noise, time=time)
    assert name == "flow_mse"
    total, count = 0.0, 0
    for b in range(3):  # per sample: x_t on the straight path from the data (t=0) to the noise (t=1)
        x_t = time[b] * noise[b] + (1 - time[b]) * a[b]
        v = model(image[b:b + 1], proprio[b:b + 1], text[b:b + 1], x_t[None], time[b:b + 1]).velocity[0]
        for k in range(4):
            if mask[b, k]:
                total += float(((v[k] - (noise[b, k] - a[b, k])) ** 2).sum())
                count += 4
    assert float(loss) == pytest.approx(total / count, rel=1e-5)
    # Padded steps do not count: moving their target changes nothing.
    moved = a.clone()
    moved[0, 3] += 5.0
    _, loss2, _ = flow_matching_loss(model, image, proprio, text, moved, mask, None, None, noise=noise, time=time)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def test_time_sample_is_shifted_beta():
    t = sample_time(200_000, generator=torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0.001 and float(t.max()) <= 1.0
    s = (t - 0.001) / 0.999  # Beta(1.5, 1): CDF s^1.5, mean 0.6
    for q in (0.2, 0.5, 0.8):
        assert float((s < q).float().mean()) == pytest.approx(q ** 1.5, abs=5e-3)
    assert float(s.mean()) == pytest.approx(0.6, abs=5e-3)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_sampler_recovers_the_data_on_a_straight_path(tiny_ds, steps):
    """With the exact velocity of the straight path to a target a, v(x, t) = (x − a)/t, every Euler step lands on
    the path, so any number of steps from noise at t=1 ends at a (a wrong sign or time grid would not)."""
    model = TinyPi0(pi0_config()).eval()
    batch = batch_of(tiny_ds, [0, 1])
    target = batch["actions"]
    model.velocity = lambda ctx, x, t: (x - target) / t[:, None, None]
    out = model.sample_actions(*_inputs(model, batch), generator=torch.Generator().manual_seed(0), steps=steps)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


def test_act_is_reproducible_and_leaves_global_rng_alone(tiny_ds):
    torch.manual_seed(0)
    model = TinyPi0(pi0_config())
    obs = _obs(tiny_ds[0])
    before = torch.get_rng_state()
    a = model.act(obs)
    assert torch.equal(before, torch.get_rng_state())
    assert a.shape == (4, 4) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    np.testing.assert_array_equal(a, model.act(obs))
    s = tiny_ds[0]
    text = model.embed_instructions([obs["instruction"]])
    direct = model.eval().sample_actions(s["image"][None], s["proprio"][None], text,
                                         generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(a, direct[0].clamp(-1, 1).detach().numpy(), rtol=0, atol=1e-6)
    other = TinyPi0(pi0_config(noise_seed=1))
    other.load_state_dict(model.state_dict())
    assert not np.allclose(other.act(obs), a)  # the seed is the only source of the difference
    with pytest.raises(CapvectorError, match="missing key 'instruction'"):
        model.act({"image": obs["image"], "proprio": obs["proprio"]})


def test_save_load_round_trip(tmp_path, tiny_ds):
    torch.manual_seed(0)
    model = TinyPi0(pi0_config())
    save_policy(model, tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["policy_type"] == "tiny-pi0" and saved["expert_width"] == 16
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, TinyPi0) and loaded.config == model.config
    assert read_policy_config(tmp_path / "p") == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    np.testing.assert_array_equal(model.act(_obs(tiny_ds[3])), loaded.act(_obs(tiny_ds[3])))
    # The Hub mixin's layout loads through the same strict reader, as the right class only.
    model.save_pretrained(tmp_path / "hub")
    assert isinstance(TinyPi0.from_pretrained(str(tmp_path / "hub")), TinyPi0)
    with pytest.raises(CapvectorError, match="holds a TinyPi0, not a TinyVLA"):
        TinyVLA.from_pretrained(str(tmp_path / "hub"))


def test_bad_config_and_inputs_are_one_line_errors(tmp_path, tiny_ds):
    model = TinyPi0(pi0_config())
    batch = batch_of(tiny_ds, [0, 1])
    with pytest.raises(CapvectorError, match=r"'noisy_actions': expected \(2, 4, 4\), found \(2, 3, 4\)"):
        model(*_inputs(model, batch), torch.zeros(2, 3, 4), torch.rand(2))
    with pytest.raises(CapvectorError, match=r"'time': expected \(2,\), found \(2, 1\)"):
        model(*_inputs(model, batch), torch.zeros(2, 4, 4), torch.rand(2, 1))
    with pytest.raises(CapvectorError, match="expert_width must be even"):
        pi0_config(expert_width=15)
    save_policy(model, tmp_path / "p")
    cfg_path = tmp_path / "p" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "policy_type": "tiny-nope"}))
    with pytest.raises(CapvectorError, match="unknown policy type 'tiny-nope'"):
        load_policy(tmp_path / "p")
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "policy_type"}))
    with pytest.raises(CapvectorError, match="unknown .*expert_width"):  # read as a tiny VLA: the pi0 keys are unknown
        load_policy(tmp_path / "p")


def test_parameter_groups_partition_the_policy():
    names = [n for n, _ in TinyPi0(pi0_config()).named_parameters()]
    sel = {g: make_selection(preset=f"tiny-pi0:{g}").filter(names) for g in PI0_PRESETS}
    assert sel["vlm"] and sel["action_expert"] and sel["action_heads"]
    assert set(sel["vlm"]).isdisjoint(sel["action_expert"]) and set(sel["vlm"]).isdisjoint(sel["action_heads"])
    assert set(sel["vlm"]) | set(sel["action_expert"]) | set(sel["action_heads"]) == set(names) == set(sel["full"])
    assert set(sel["vlm+expert"]) == set(sel["vlm"]) | set(sel["action_expert"])
    assert sorted({n.rsplit(".", 1)[0] for n in sel["action_heads"]}) == sorted(
        ["action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out", "state_proj"])
    assert make_selection(preset="tiny-pi0:vlm").matches("base_model.model.vlm.trunk.layers.0.attn.q_proj.weight")


# Where each tiny-pi0 module sits in LeRobot's pi0 (`model.` + PI0Pytorch's attribute names).
_PG = "model.paligemma_with_expert.paligemma.model."
_LEROBOT_PI0 = [
    ("vlm.vision.", _PG + "vision_tower.vision_model."),
    ("vlm.language.", _PG + "language_model.embed_tokens."),
    ("vlm.trunk.layers.", _PG + "language_model.layers."),
    ("vlm.trunk.norm.", _PG + "language_model.norm."),
    ("action_expert.layers.", "model.paligemma_with_expert.gemma_expert.model.layers."),
    ("action_expert.norm.", "model.paligemma_with_expert.gemma_expert.model.norm."),
    ("action_expert.pos_embed", "model.paligemma_with_expert.gemma_expert.model.pos_embed"),
    ("state_proj.", "model.state_proj."),
    ("action_in_proj.", "model.action_in_proj."),
    ("action_time_mlp_in.", "model.action_time_mlp_in."),
    ("action_time_mlp_out.", "model.action_time_mlp_out."),
    ("action_out_proj.", "model.action_out_proj."),
]


def _as_lerobot_pi0(name: str) -> str:
    for tiny, real in _LEROBOT_PI0:
        if name.startswith(tiny):
            return real + name[len(tiny):]
    raise AssertionError(f"{name}: no LeRobot pi0 counterpart in the table")


@pytest.mark.parametrize("group", ["vlm", "action_expert", "action_heads", "vlm+expert", "full"])
def test_presets_select_what_lerobot_pi0_presets_select(group):
    """Issue 15 item 5: renamed module by module into LeRobot pi0's layout, the tiny pi0's parameters are selected
    by `pi0:<group>` exactly where `tiny-pi0:<group>` selects them."""
    import capvector.integrations  # noqa: F401  (registers the pi0 presets)

    names = [n for n, _ in TinyPi0(pi0_config()).named_parameters()]
    tiny = {_as_lerobot_pi0(n) for n in make_selection(preset=f"tiny-pi0:{group}").filter(names)}
    real = set(make_selection(preset=f"pi0:{group}").filter([_as_lerobot_pi0(n) for n in names]))
    assert tiny and tiny == real


@pytest.mark.long
def test_overfits_a_fixed_batch(tiny_ds):
    """300 Adam steps on four samples (each repeated 8 times, so every step sees 8 noise draws per sample): the
    flow loss at a fixed set of (ε, t) falls several-fold, and chunks sampled from noise land near the
    demonstrated actions (much closer than the batch's mean chunk)."""
    torch.manual_seed(0)
    model = TinyPi0(pi0_config(expert_width=32))
    batch = batch_of(tiny_ds, [0, 16, 32, 48] * 8)
    image, proprio, text = _inputs(model, batch)
    a = batch["actions"]
    g = torch.Generator().manual_seed(1)
    probe = dict(noise=torch.randn(a.shape, generator=g), time=torch.rand(a.shape[0], generator=g))

    def probe_loss() -> float:
        with torch.no_grad():
            return float(flow_matching_loss(model, image, proprio, text, a, None, None, None, **probe)[1])

    before = probe_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss, _ = flow_matching_loss(model, image, proprio, text, a, None, None, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert probe_loss() < before / 5, (before, probe_loss())
    pred = model.eval().predict_chunk(image[:4], proprio[:4], text[:4])
    assert float((pred - a[:4]).abs().mean()) < 0.5 * float((a[:4] - a[:4].mean(0)).abs().mean())


def test_shipped_tiny_pi0_loads_with_its_recipe(tiny_ds):
    from importlib.resources import files

    directory = files("capvector.assets") / "tiny_pi0_pretrained"
    recipe = json.loads((directory / "recipe.json").read_text())
    assert recipe["train"]["steps"] == 4000 and len(recipe["eval"]["per_task"]) == 10
    assert recipe["pretrain_config"]["policy"]["policy_type"] == "tiny-pi0"
    policy = load_policy(str(directory))
    assert isinstance(policy, TinyPi0) and policy.config.embedder == "minilm"
