"""Metrics to accelerate's trackers: the same records as metrics.jsonl at the same steps, nothing else changed;
an unknown tracker or a missing tracker package is one clear error before any output."""

from __future__ import annotations

import json
from importlib.util import find_spec

import pytest
import torch
from accelerate import tracking as accelerate_tracking
from typer.testing import CliRunner

from capvector.cli import app
from capvector.errors import CapvectorError
from capvector.policy import load_policy
from capvector.train import SyntheticDemoDataset, TrainConfig, Trainer
from testing_common import small_config


class RecordingTracker(accelerate_tracking.GeneralTracker):
    """Keeps what accelerate hands a tracker, so a test can compare it with metrics.jsonl."""

    name = "capvector_test_recorder"
    requires_logging_directory = True
    main_process_only = True
    runs: list[RecordingTracker] = []

    def __init__(self, run_name: str, logging_dir: str, **kwargs) -> None:
        super().__init__()
        self.run_name, self.logging_dir = run_name, logging_dir
        self.config: dict | None = None
        self.logged: list[tuple[int, dict]] = []
        self.finished = 0
        RecordingTracker.runs.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((step, dict(values)))

    def finish(self) -> None:
        self.finished += 1


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / name), steps=6, batch_size=8, lr=3e-3, warmup_steps=2, log_every=2,
                       progress=False, seed=7, **kw)


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not hasattr(accelerate_tracking, "register_tracker_class"),
                    reason="accelerate < 1.11 cannot register a tracker class by name")
def test_trackers_get_the_jsonl_records_and_change_nothing_else(tmp_path):
    accelerate_tracking.register_tracker_class(RecordingTracker)
    RecordingTracker.runs.clear()
    ds = SyntheticDemoDataset(length=32, chunk=4, seed=3, episode_len=8)
    plain = Trainer(_cfg(tmp_path, "plain"), ds, policy_config=small_config()).train()
    assert not (tmp_path / "plain" / "logs").exists()
    trainer = Trainer(_cfg(tmp_path, "tracked", log_with="capvector_test_recorder"), ds, policy_config=small_config())
    tracked = trainer.train()
    (run,) = RecordingTracker.runs
    assert run.run_name == "tracked" and run.logging_dir == str(tmp_path / "tracked" / "logs")
    assert run.config["steps"] == 6 and run.config["log_with"] == "capvector_test_recorder"
    assert json.loads(run.config["lora_targets"]) == TrainConfig().lora_targets  # lists go in as JSON text
    records = _records(tmp_path / "tracked")
    assert [step for step, _ in run.logged] == [r["step"] for r in records] == [2, 4, 6]
    for (_, values), record in zip(run.logged, records, strict=True):
        assert values == {k: v for k, v in record.items() if k != "step"}
    assert run.finished == 1 and trainer.accelerator.trackers == []
    # the trackers only watch: same weights, same metrics (timing aside) as the run without them
    ignore = {"samples_per_s"}
    assert [{k: v for k, v in r.items() if k not in ignore} for r in records] == \
        [{k: v for k, v in r.items() if k not in ignore} for r in _records(tmp_path / "plain")]
    a, b = load_policy(plain.policy_dir).state_dict(), load_policy(tracked.policy_dir).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_tracker_or_bad_value_is_one_clear_error(tmp_path):
    ds = SyntheticDemoDataset(length=16, chunk=4, seed=3, episode_len=8)
    with pytest.raises(CapvectorError, match=r"log_with 'tensorbord' is not a tracker accelerate knows; "
                                             r"choose from \[.*'tensorboard'.*'trackio'.*'wandb'"):
        Trainer(_cfg(tmp_path, "typo", log_with=["tensorbord"]), ds, policy_config=small_config())
    with pytest.raises(CapvectorError, match="log_with must be a tracker name or a list of them, found 3"):
        _cfg(tmp_path, "bad", log_with=3)
    r = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "cli"), "--steps", "1", "--width", "32", "--depth",
                                 "1", "--embedder", "hash", "--log-with", "nope"])
    assert r.exit_code == 2 and "log_with 'nope' is not a tracker accelerate knows" in r.output, r.output
    assert not (tmp_path / "cli").exists() and not (tmp_path / "typo").exists()


@pytest.mark.skipif(find_spec("tensorboard") is not None or find_spec("tensorboardX") is not None,
                    reason="tensorboard is installed here")
def test_a_tracker_whose_package_is_missing_is_named(tmp_path):
    ds = SyntheticDemoDataset(length=16, chunk=4, seed=3, episode_len=8)
    with pytest.raises(CapvectorError, match=r"log_with 'tensorboard' needs its package, which is not installed: "
                                             r"pip install tensorboard"):
        Trainer(_cfg(tmp_path, "tb", log_with="tensorboard"), ds, policy_config=small_config())


@pytest.mark.skipif(find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_gets_event_files(tmp_path):
    ds = SyntheticDemoDataset(length=16, chunk=4, seed=3, episode_len=8)
    Trainer(_cfg(tmp_path, "tb", log_with="tensorboard"), ds, policy_config=small_config()).train()
    assert list((tmp_path / "tb" / "logs").rglob("events.out.tfevents.*"))
