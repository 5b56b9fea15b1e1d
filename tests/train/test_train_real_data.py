"""`capvector train --data DIR` on a real (one-episode) MetaWorld demo dataset, with the alignment objective:
the dataset's samples meet the policy and the geometric teacher without conversion."""

from __future__ import annotations

import json

import pytest

from capvector.commands.train import train_command
from capvector.policy import load_policy


def test_train_on_collected_demos(tmp_path):
    pytest.importorskip("metaworld", reason="the simulator extra (capvector[sim]) is not installed")
    from capvector.data import collect

    collect.collect(tmp_path / "demos", tasks=["reach-v3"], episodes=1, seed=0, progress=False)
    train_command(output=tmp_path / "run", data=str(tmp_path / "demos"), steps=2, batch_size=8, width=32, depth=2,
                  embedder="hash", aux_weight=0.5, aux_layer=1, threads=1)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and 0.0 < last["align"] < 2.0 and last["action_l1"] > 0.0
    assert load_policy(tmp_path / "run" / "policy").config.width == 32
