"""Latent reasoning: the thought tokens read the sequence without changing it (checked against unmasked passes),
they are training-only (the saved policy is unchanged in kind), and the trainer learns the plan through them on
both architectures."""

from __future__ import annotations

import pytest
import torch

from capvector.errors import CapvectorError
from capvector.objectives import LatentReasoning, make_teacher, objective_name
from capvector.policy import Pi0Config, TinyPi0, TinyVLA, load_policy
from capvector.policy.model import run_trunk
from testing_common import small_config, train_plan_objective


def _pi0_config() -> Pi0Config:
    return Pi0Config(width=32, depth=2, heads=2, embedder="hash", chunk=4, expert_width=16, expert_depth=2)


def _inputs(cfg, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (b, cfg.num_cameras, 3, cfg.image_size, cfg.image_size), generator=g,
                          dtype=torch.uint8)
    return image, torch.randn(b, cfg.proprio_dim, generator=g), torch.randn(b, cfg.text_dim, generator=g)


def test_one_block_pass_matches_unmasked_passes_for_each_side():
    """Layer 1 by hand: the sequence's rows are the block over the sequence alone; the thoughts' rows are the
    block over sequence + thoughts without any mask (a thought attends to everything either way)."""
    torch.manual_seed(0)
    model = TinyVLA(small_config(depth=1)).eval()
    tokens, thoughts = torch.randn(2, 7, 32), torch.randn(2, 3, 32)
    block = model.vlm.trunk.layers[0]
    normed, captured = run_trunk(model.vlm.trunk, tokens, thoughts, hidden_layer=1)
    assert torch.allclose(captured[:, :7], block(tokens), atol=1e-5)
    assert torch.allclose(captured[:, 7:], block(torch.cat([tokens, thoughts], dim=1))[:, 7:], atol=1e-5)
    assert torch.allclose(normed, model.vlm.trunk.norm(block(tokens)), atol=1e-5)


@pytest.mark.parametrize("kind", ["tiny-vla", "tiny-pi0"])
def test_thoughts_never_change_what_the_policy_computes(kind):
    torch.manual_seed(1)
    cfg = small_config() if kind == "tiny-vla" else _pi0_config()
    model = (TinyVLA if kind == "tiny-vla" else TinyPi0)(cfg).eval()
    image, proprio, text = _inputs(cfg)
    thoughts = torch.randn(3, 4, cfg.width) * 5
    if kind == "tiny-vla":
        args = (image, proprio, text)
        plain, with_thoughts = model(*args, hidden_layer=1), model(*args, hidden_layer=1, thoughts=thoughts)
        assert torch.allclose(plain.actions, with_thoughts.actions, atol=1e-5)
        assert torch.allclose(plain.query_hidden, with_thoughts.query_hidden, atol=1e-5)
        out = plain.actions
    else:
        noisy, time = torch.randn(3, cfg.chunk, cfg.action_dim), torch.rand(3)
        plain = model(image, proprio, text, noisy, time, hidden_layer=1)
        with_thoughts = model(image, proprio, text, noisy, time, hidden_layer=1, thoughts=thoughts)
        assert torch.allclose(plain.velocity, with_thoughts.velocity, atol=1e-5)
        out = plain.velocity
    assert plain.thought_hidden is None and with_thoughts.thought_hidden.shape == (3, 4, cfg.width)
    assert torch.allclose(plain.visual_hidden, with_thoughts.visual_hidden, atol=1e-5)
    # the thoughts do read the observation: another image changes them, not through the policy's outputs
    other = _inputs(cfg, seed=5)[0]
    moved = model(other, proprio, text, *(() if kind == "tiny-vla" else (noisy, time)), hidden_layer=1,
                  thoughts=thoughts)
    assert not torch.allclose(moved.thought_hidden, with_thoughts.thought_hidden, atol=1e-3)
    assert out.shape[0] == 3
    with pytest.raises(CapvectorError, match=r"policy input 'thoughts': expected \(3, M, 32\)"):
        model(image, proprio, text, *(() if kind == "tiny-vla" else (noisy, time)), thoughts=torch.zeros(3, 4, 8))


def test_the_thoughts_loss_trains_the_vlm_and_not_the_action_readout():
    torch.manual_seed(2)
    cfg = small_config()
    model, objective = TinyVLA(cfg), LatentReasoning(cfg.width, 21, layer=1)
    image, proprio, text = _inputs(cfg)
    out = model(image, proprio, text, hidden_layer=1, thoughts=objective.thought_tokens(3))
    objective(out.thought_hidden, torch.randn(3, 21)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["vlm.trunk.layers.0.attn.q_proj.weight"].abs().sum() > 0  # the thoughts' own queries
    assert grads["vlm.vision.patch_embed.weight"].abs().sum() > 0  # it reads the image through the keys/values
    assert all(grads[n] is None for n in grads if n.startswith("action_expert.head"))
    assert objective.thoughts.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["tiny-vla", "tiny-pi0"])
def test_trainer_learns_the_plan_through_thought_tokens(tmp_path, kind):
    policy_config = small_config() if kind == "tiny-vla" else _pi0_config()
    run = train_plan_objective(tmp_path / "run", "latent-reasoning", policy_config, "latent")
    assert isinstance(run.trainer.alignment, LatentReasoning)
    assert run.after < 0.7 * run.before
    assert all("latent" in r and "subgoal" not in r for r in run.rows)
    saved = load_policy(run.result.policy_dir)  # the thoughts and head stay outside the policy
    fresh = (TinyVLA if kind == "tiny-vla" else TinyPi0)(policy_config)
    assert set(saved.state_dict()) == set(fresh.state_dict())
    assert objective_name("latent-reasoning") == "latent reasoning"
    assert make_teacher("latent-reasoning").reads == "thoughts"
