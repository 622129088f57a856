"""One trainer per run: the run folder's lock, waiting or failing fast, a dead holder's lock taken over,
and a killed run read as interrupted."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from analysis.config import TrainConfig
from analysis.hooks import read_stats
from analysis.locks import FolderBusy, FolderLock, holder
from analysis.store import INTERRUPTED_ERROR, RunDir, list_runs, load_runs
from analysis.train import Callback, train
from conftest import TINY as TINY_TRAINING

ROOT = Path(__file__).resolve().parents[1]
TINY = {**TINY_TRAINING, "depth": 8, "stats_every": 1}
KEY = ["step", "module", "call", "kind", "stat", "param", "rank"]


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def waiting_for_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside FolderLock.acquire (polling for a lock someone else holds)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code is FolderLock.acquire.__code__:
            return True
        frame = frame.f_back
    return False


class Gate(Callback):
    """Holds a training at its start until released, so a second trainer can be started meanwhile."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def on_train_start(self, run):
        self.started.set()
        assert self.release.wait(120)


def test_concurrent_trainings_train_once_and_the_second_waits_then_reuses_the_run(tmp_path):
    config = TrainConfig(**TINY)
    gate = Gate()
    results = {}

    def first():
        from analysis.train import StatsCallback

        results["first"] = train(config, root=tmp_path, progress=False, callbacks=[gate, StatsCallback(1)])

    def second():
        results["second"] = train(config, root=tmp_path, progress=False)

    first_thread = threading.Thread(target=first)
    first_thread.start()
    assert gate.started.wait(120)
    run = RunDir(tmp_path, config.run_id())
    # the first trainer holds the run: a non-waiting trainer fails at once, naming it
    with pytest.raises(FolderBusy, match=rf"is in use by .*/{os.getpid()} \(since "):
        train(config, root=tmp_path, progress=False, wait=False)
    assert run.status() == "running"
    second_thread = threading.Thread(target=second)
    second_thread.start()
    wait_for(lambda: waiting_for_lock(second_thread), "the second trainer to wait for the lock")
    gate.release.set()
    first_thread.join(120)
    second_thread.join(120)

    assert results["first"].status == "complete" and not results["first"].skipped
    assert results["second"].status == "complete" and results["second"].skipped
    assert results["second"].metrics.equals(results["first"].metrics)
    record = run.record()
    assert record["status"] == "complete" and record["steps_completed"] == 4 and record["world_size"] == 1
    stats = read_stats(run.stats_path)
    assert sorted(stats["step"].unique()) == [1, 2, 3, 4]
    assert not stats.duplicated(KEY).any()
    assert (stats.groupby("step").size() == len(stats[stats["step"] == 1])).all()
    metrics = run.read_metrics()
    assert not metrics.duplicated(["step", "split", "metric"]).any()
    assert list_runs(tmp_path)["status"].tolist() == ["complete"]


HOLDER = textwrap.dedent("""
    import sys, time
    from analysis.locks import FolderLock
    from analysis.store import atomic_write_json
    folder = sys.argv[1]
    FolderLock(folder, wait=False).acquire()
    atomic_write_json(folder + "/config.json", {"run_id": "r", "status": "running", "config": {"depth": 8}})
    print("locked", flush=True)
    time.sleep(600)
""")


def test_lock_of_a_killed_holder_is_taken_over_and_its_run_reads_as_interrupted(tmp_path):
    config = TrainConfig(**{**TINY, "stats_every": 0})
    run = RunDir(tmp_path, config.run_id())
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run.path)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline() == "locked\n"
        assert f"/{process.pid} (since " in holder(run.path)
        assert run.status() == "running" and list_runs(tmp_path)["status"].tolist() == ["running"]
        with pytest.raises(FolderBusy, match=rf"{run.path} is in use by .*/{process.pid} \(since ") as busy:
            train(config, root=tmp_path, progress=False, wait=False)
        assert busy.value.holder == holder(run.path)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()

    # the operating system released the dead holder's lock; its record still says running
    assert holder(run.path) is None
    assert json.loads(run.config_path.read_text())["status"] == "running"
    assert run.status() == "interrupted"
    row = list_runs(tmp_path).iloc[0]
    assert row["status"] == "interrupted" and row["error"] == INTERRUPTED_ERROR
    assert "stopped without finishing" in INTERRUPTED_ERROR
    assert json.loads(run.config_path.read_text())["status"] == "running"  # readers never write it

    result = train(config, root=tmp_path, progress=False, wait=False)
    assert result.status == "complete" and not result.skipped
    assert run.status() == "complete" and run.record()["error"] is None


def test_interrupted_is_what_load_runs_sees_too(tmp_path):
    run = RunDir(tmp_path, "r")
    run.start({"depth": 8})
    run.write_metrics([(1, "train", "loss", 2.0)])
    assert set(load_runs(tmp_path)["status"]) == {"interrupted"}
    with run.lock():
        assert run.status() == "running"
        assert set(load_runs(tmp_path)["status"]) == {"running"}
        assert list_runs(tmp_path)["error"].isna().all()


def test_folder_busy_survives_pickling(tmp_path):
    error = pickle.loads(pickle.dumps(FolderBusy(tmp_path, "host/1 (since T)")))
    assert isinstance(error, FolderBusy)
    assert (error.folder, error.holder) == (tmp_path, "host/1 (since T)")
    assert str(error) == f"{tmp_path} is in use by host/1 (since T)"
