"""Sub-goal prediction (the latent-reasoning objective): targets against a direct reading of the state, the head
and loss against a direct formula, the real dataset's look-ahead, and a trainer run that learns the plan."""

from __future__ import annotations

import pytest
import torch

from capvector.data.format import STATE_AHEAD_STEPS
from capvector.errors import CapvectorError
from capvector.objectives import SubgoalPrediction, SubgoalTeacher, make_teacher
from capvector.policy import TinyVLA, load_policy
from capvector.train import SyntheticDemoDataset
from testing_common import train_plan_objective


def test_targets_read_the_plan_from_the_state():
    g = torch.Generator().manual_seed(0)
    now, ahead = torch.randn(2, 39, generator=g), torch.randn(2, len(STATE_AHEAD_STEPS), 39, generator=g)
    y = SubgoalTeacher()({"state": now, "state_ahead": ahead}, grid=8)
    assert y.shape == (2, SubgoalTeacher.target_dim) == (2, 21)
    b = 1
    hand = now[b, 0:3]
    expected = [*(ahead[b, i, 0:3] - hand for i in range(3)), now[b, 4:7] - hand, now[b, 36:39] - hand,
                ahead[b, 2, 4:7] - now[b, 4:7]]
    assert torch.allclose(y[b, :18], torch.cat(expected) / 0.1, atol=1e-5)
    assert torch.allclose(y[b, 18:], ahead[b, :, 3])


def test_teacher_errors_name_the_missing_or_misshapen_state():
    with pytest.raises(CapvectorError, match="no 'state'"):
        make_teacher("subgoal")({"image": torch.zeros(1)}, grid=8)
    with pytest.raises(CapvectorError, match="state_ahead"):
        SubgoalTeacher()({"state": torch.zeros(2, 39), "state_ahead": torch.zeros(2, 2, 39)}, grid=8)
    with pytest.raises(CapvectorError, match=r"batch\['state'\] has shape \(2, 38\); expected 2 dims ending in 39"):
        SubgoalTeacher()({"state": torch.zeros(2, 38), "state_ahead": torch.zeros(2, 3, 39)}, grid=8)


def test_loss_is_smooth_l1_of_the_head_on_mean_query_state():
    torch.manual_seed(0)
    obj = SubgoalPrediction(16, 5, layer=1, hidden_dim=12)
    h, y = torch.randn(3, 4, 16), torch.randn(3, 5)
    z = obj.head(h.mean(dim=1))
    d = (z - y).abs()
    expected = torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    assert obj(h, y).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(CapvectorError, match="do not pair up"):
        obj(h, torch.randn(2, 5))


def test_synthetic_samples_carry_the_state_ahead_clamped_at_the_episode_end():
    ds = SyntheticDemoDataset(length=16, chunk=4, seed=1, episode_len=16)
    first, last = ds[0], ds[15]
    assert first["state_ahead"].shape == (3, 39)
    assert torch.equal(first["state_ahead"][0, :3], ds[8]["state"][:3])  # 8 steps ahead = the sample 8 later
    assert torch.equal(last["state_ahead"][2], last["state"])  # past the end: the last state


def test_collected_demos_carry_the_state_ahead(tmp_path):
    pytest.importorskip("metaworld", reason="the simulator extra (capvector[sim]) is not installed")
    from capvector.data import collect, open_dataset
    from capvector.data.format import load_episode, read_manifest

    collect.collect(tmp_path / "demos", tasks=["reach-v3"], episodes=1, seed=0, progress=False)
    ds = open_dataset(tmp_path / "demos")
    states = load_episode(tmp_path / "demos", read_manifest(tmp_path / "demos")["episodes"][0])["state"]
    n, t = states.shape[0], 5
    sample = ds[t]
    assert torch.equal(sample["state"], torch.from_numpy(states[t]))
    for i, h in enumerate(STATE_AHEAD_STEPS):
        assert torch.equal(sample["state_ahead"][i], torch.from_numpy(states[min(t + h, n - 1)]))


def test_trainer_learns_the_plan_and_keeps_the_policy_format(tmp_path, tiny_cfg):
    run = train_plan_objective(tmp_path / "run", "subgoal", tiny_cfg, "subgoal")
    assert run.after < 0.6 * run.before
    assert all("subgoal" in r and "align" not in r for r in run.rows)
    saved = load_policy(run.result.policy_dir)  # the head is training-only: the policy's tensors are unchanged in kind
    assert set(saved.state_dict()) == set(TinyVLA(tiny_cfg).state_dict())
