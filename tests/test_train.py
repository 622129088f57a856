import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.config import TrainConfig
from analysis.store import RunDir
from analysis.train import Callback, lr_factor, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(depth=8, width=4, batch_size=16, steps=6, val_every=3, val_batches=2, stats_every=0, device="cpu")


def _series(result, split, metric):
    m = result.metrics
    return m[(m["split"] == split) & (m["metric"] == metric)].set_index("step")["value"]


def test_run_writes_record_and_tidy_metrics(tmp_path):
    result = train(TrainConfig(**TINY), root=tmp_path, progress=False)
    assert result.status == "complete" and not result.skipped
    record = RunDir(tmp_path, result.run_id).record()
    assert record["status"] == "complete" and record["error"] is None
    assert record["steps_completed"] == 6 and record["end_time"] >= record["start_time"]
    assert record["config"]["depth"] == 8 and record["device"] == "cpu"
    assert record["model"]["layers"] == 8 and record["model"]["params"] > 0
    metrics = pd.read_parquet(result.path / "metrics.parquet")
    assert list(metrics.columns) == ["step", "split", "metric", "value"]
    assert sorted(_series(result, "train", "loss").index) == [1, 2, 3, 4, 5, 6]
    assert sorted(_series(result, "val", "accuracy").index) == [3, 6]
    assert _series(result, "train", "time").is_monotonic_increasing
    accuracy = _series(result, "train", "accuracy")
    assert ((accuracy >= 0) & (accuracy <= 1)).all()


def test_same_seed_same_loss_curve_and_complete_run_is_skipped(tmp_path):
    config = TrainConfig(**TINY)
    first = train(config, root=tmp_path / "a", progress=False)
    second = train(config, root=tmp_path / "b", progress=False)
    pd.testing.assert_series_equal(_series(first, "train", "loss"), _series(second, "train", "loss"))
    other_seed = train(config.replace(seed=1), root=tmp_path / "a", progress=False)
    assert not _series(first, "train", "loss").equals(_series(other_seed, "train", "loss"))
    again = train(config, root=tmp_path / "a", progress=False)
    assert again.skipped and again.status == "complete"
    pd.testing.assert_frame_equal(again.metrics, first.metrics)


def test_resnet20_loss_falls_on_synthetic(tmp_path):
    config = TrainConfig(depth=20, batch_size=32, steps=40, lr=0.05, val_every=40, val_batches=4,
                         stats_every=0, device="cpu", schedule="constant")
    loss = _series(train(config, root=tmp_path, progress=False), "train", "loss")
    assert loss.iloc[-10:].mean() < 0.85 * loss.iloc[:5].mean()


def test_learning_rate_schedules():
    warm = TrainConfig(lr=1.0, steps=10, warmup_steps=4, schedule="constant")
    assert [lr_factor(warm, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    step = TrainConfig(lr=1.0, steps=10, schedule="step", milestones=(3, 6), gamma=0.5)
    assert [lr_factor(step, s) for s in range(8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    cosine = TrainConfig(lr=1.0, steps=5, schedule="cosine", min_lr=0.2)
    factors = [lr_factor(cosine, s) for s in range(5)]
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]
    assert factors == pytest.approx(expected)
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.2)


def test_recorded_lr_follows_schedule(tmp_path):
    config = TrainConfig(**{**TINY, "lr": 0.1, "schedule": "step", "milestones": (3,), "gamma": 0.1})
    lr = _series(train(config, root=tmp_path, progress=False), "train", "lr")
    assert lr.tolist() == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_non_finite_loss_marks_run_diverged_and_keeps_data(tmp_path):
    config = TrainConfig(**{**TINY, "norm": "none", "lr": 1e6, "schedule": "constant", "steps": 30})
    result = train(config, root=tmp_path, progress=False)
    assert result.status == "diverged"
    record = RunDir(tmp_path, result.run_id).record()
    assert record["status"] == "diverged" and record["diverged_step"] == result.diverged_step
    loss = _series(result, "train", "loss")
    assert loss.index.max() == result.diverged_step
    assert not math.isfinite(loss.iloc[-1]) and math.isfinite(loss.iloc[0])
    assert isinstance(record["diverged_layer"], str) and record["diverged_layer"]


def test_first_nonfinite_module_is_found_in_forward_order_on_a_copy():
    import torch
    from torch import nn

    from analysis.train import first_nonfinite_module

    class Overflow(nn.Module):
        def forward(self, x):
            return x * float("inf")

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Sequential(nn.BatchNorm1d(3), Overflow()), nn.Linear(3, 2))
    x = torch.ones(4, 3)
    before = model[2][0].running_mean.clone()
    assert first_nonfinite_module(model, x) == "2.1"
    assert torch.equal(model[2][0].running_mean, before)  # the probe ran on a copy
    assert first_nonfinite_module(nn.Sequential(nn.Linear(3, 2)), x) == "loss"


class _Boom(Callback):
    def __init__(self):
        self.ended = False

    def on_step_end(self, run):
        if run.step == 2:
            raise RuntimeError("exploded at step 2")

    def on_train_end(self, run):
        self.ended = True


def test_exception_marks_run_failed_with_error_and_keeps_metrics(tmp_path):
    boom = _Boom()
    with pytest.raises(RuntimeError, match="exploded"):
        train(TrainConfig(**TINY), root=tmp_path, progress=False, callbacks=[boom])
    assert boom.ended
    run = RunDir(tmp_path, TrainConfig(**TINY).run_id())
    record = run.record()
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: exploded at step 2"
    assert sorted(run.read_metrics()["step"].unique()) == [1, 2]
    # a failed run is not skipped: the next call trains it again
    assert train(TrainConfig(**TINY), root=tmp_path, progress=False).status == "complete"


def test_invalid_config_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="optimizer"):
        train(TrainConfig(**{**TINY, "optimizer": "sgdd"}), root=tmp_path)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_stats_are_written_beside_metrics(tmp_path):
    from analysis.hooks import read_stats

    result = train(TrainConfig(**{**TINY, "stats_every": 3}), root=tmp_path, progress=False)
    stats = read_stats(result.path / "stats.parquet")
    assert {"activation", "param_grad", "update"} <= set(stats["kind"])
    # statistics steps are numbered like the metrics: the first step is 1
    assert sorted(stats["step"].unique()) == [1, 4]
    # the validation after step 3 is not recorded as extra calls of step 4: one training pass per step
    assert (stats["call"] == 0).all() and (stats["rank"] == 0).all()
    assert len(stats[stats["step"] == 4]) == len(stats[stats["step"] == 1])
    lr = stats.query("kind == 'global' and stat == 'lr'").set_index("step")["value"]
    assert lr.to_dict() == _series(result, "train", "lr").loc[[1, 4]].to_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_device_trains_on_cuda_with_stats(tmp_path):
    from analysis.hooks import read_stats

    result = train(TrainConfig(**{**TINY, "device": "auto", "stats_every": 2}), root=tmp_path, progress=False)
    assert result.status == "complete"
    assert RunDir(tmp_path, result.run_id).record()["device"] == "cuda"
    stats = read_stats(result.path / "stats.parquet")
    assert stats["value"].notna().all() and stats["step"].nunique() >= 3


class _Validations(Callback):
    """Records each validation and what the metrics file held at its end."""

    def __init__(self):
        self.events = []

    def on_validation_start(self, run):
        self.events.append(("start", run.step))

    def on_validation_end(self, run):
        written = run.run_dir.read_metrics()
        self.events.append(("end", run.step, int(written["step"].max()) if len(written) else None))


def test_validation_callbacks_come_before_the_metrics_of_their_step_are_written(tmp_path):
    validations = _Validations()
    train(TrainConfig(**TINY), root=tmp_path, progress=False, callbacks=[validations])
    assert validations.events == [("start", 3), ("end", 3, None), ("start", 6), ("end", 6, 3)]


def test_batch_must_split_evenly_between_processes(tmp_path, monkeypatch):
    import contextlib

    from analysis import train as training

    @contextlib.contextmanager
    def three_processes(device):
        yield training.Group(rank=0, world_size=3), device

    monkeypatch.setattr(training, "process_group", three_processes)
    with pytest.raises(ValueError, match="batch_size: must divide into equal shares for the 3 processes, got 16"):
        train(TrainConfig(**TINY), root=tmp_path, progress=False)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_config_from_file_and_settings(tmp_path):
    from analysis.train import config_from

    path = tmp_path / "config.yaml"
    path.write_text("depth: 8\nwidth: 4\nmilestones: [2, 4]\nschedule: step\n")
    config = config_from(path, ["lr=1e-3", "width=None", "betas=[0.8, 0.9]"])
    assert config == TrainConfig(depth=8, width=None, milestones=(2, 4), schedule="step", lr=0.001, betas=(0.8, 0.9))


@pytest.mark.parametrize("argv, message", [
    (["--set", "depth=7"], "train: error: depth: 7 is not supported; valid depths: "),
    (["--set", "depht=8"], "train: error: depht: unknown field; known fields: "),
    (["--set", "depth"], "train: error: --set: expected KEY=VALUE, got 'depth'"),
    (["--set", "milestones=2,4"], "train: error: --set milestones: expected one value, got 2 (write a list as [a, b])"),
    (["--config", "missing.yaml"], "train: error: [Errno 2] No such file or directory: 'missing.yaml'"),
])
def test_command_line_errors_are_one_line_with_status_2(argv, message, tmp_path, capsys, monkeypatch):
    from analysis.train import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_command_line_error_in_its_own_process_has_no_traceback(tmp_path):
    command = [sys.executable, "-m", "analysis.train", "--root", str(tmp_path), "--set", "optimizer=sgdd"]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert finished.stderr.splitlines() == ["train: error: optimizer: 'sgdd' is not one of 'sgd', 'adam', 'adamw'"]


def test_command_line_trains_then_reuses_and_fails_fast_when_busy(tmp_path, capsys):
    from analysis.locks import FolderLock
    from analysis.train import main

    argv = ["--root", str(tmp_path), *(f"--set={key}={value}" for key, value in TINY.items())]
    run_id = TrainConfig(**TINY).run_id()
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{run_id}: complete: {tmp_path / run_id}\n"
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{run_id}: complete (trained before): {tmp_path / run_id}\n"
    busy = TrainConfig(**{**TINY, "seed": 1})
    with FolderLock(tmp_path / busy.run_id()):
        assert main([*argv, "--set=seed=1", "--no-wait"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"train: error: {tmp_path / busy.run_id()} is in use by ") and f"/{os.getpid()} (" in err


def test_killed_training_keeps_statistics_up_to_its_last_validation_and_reads_as_interrupted(tmp_path):
    from analysis.hooks import read_stats
    from analysis.store import INTERRUPTED_ERROR, list_runs

    settings = {**TINY, "image_size": 8, "batch_size": 8, "steps": 100_000, "val_every": 2, "val_batches": 1,
                "stats_every": 1, "threads": 1}
    run = RunDir(tmp_path, TrainConfig(**settings).run_id())
    command = [sys.executable, "-m", "analysis.train", "--root", str(tmp_path),
               *(f"--set={key}={value}" for key, value in settings.items())]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (run.read_metrics()["split"] == "val").sum() < 6:  # three validations
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    metrics = run.read_metrics()
    last = int(metrics.loc[metrics["split"] == "val", "step"].max())
    stats = read_stats(run.stats_path)
    per_step = stats.groupby("step").size()
    assert set(range(1, last + 1)) <= set(per_step.index)
    assert (per_step == per_step.loc[1]).all() and stats["value"].notna().all()
    assert not stats.duplicated(["step", "module", "call", "kind", "stat", "param", "rank"]).any()

    assert run.record()["status"] == "running" and run.status() == "interrupted"
    row = list_runs(tmp_path).iloc[0]
    assert row["status"] == "interrupted" and row["error"] == INTERRUPTED_ERROR
