"""run_training: the one way to run a training job; it owns the thread count, a Trainer never touches it."""

from __future__ import annotations

import torch

from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer, run_training
from testing_common import small_config


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "run"), steps=2, batch_size=4, warmup_steps=0, log_every=1,
                       progress=False, **kw)


def test_threads_are_set_for_the_run_and_restored(tmp_path, monkeypatch):
    seen = []
    train = Trainer.train

    def recording_train(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", recording_train)
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    try:
        result = run_training(_cfg(tmp_path, threads=want), SyntheticDemoDataset(length=8, chunk=4),
                              policy_config=small_config())
    finally:
        torch.set_num_threads(before)
    assert seen == [want] and result.steps == 2
    assert torch.get_num_threads() == before


def test_a_trainer_leaves_the_thread_count_alone(tmp_path):
    before = torch.get_num_threads()
    Trainer(_cfg(tmp_path, threads=before + 1), SyntheticDemoDataset(length=8, chunk=4), policy_config=small_config())
    assert torch.get_num_threads() == before
