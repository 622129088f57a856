import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from analysis import store
from analysis.store import RunDir, atomic_write_json, list_runs, load_runs, write_parquet_atomic


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"status": "running"})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between writing the temp file and the rename

    monkeypatch.setattr(store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"status": "complete", "big": "x" * 100_000})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_interrupted_parquet_write_keeps_previous_table(tmp_path, monkeypatch):
    path = tmp_path / "metrics.parquet"
    first = store.metrics_frame([(1, "train", "loss", 2.0)])
    write_parquet_atomic(first, path)
    original_replace = os.replace
    monkeypatch.setattr(store.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        write_parquet_atomic(store.metrics_frame([(2, "train", "loss", 1.0)] * 1000), path)
    monkeypatch.setattr(store.os, "replace", original_replace)
    pd.testing.assert_frame_equal(pd.read_parquet(path), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.parquet"]


def test_run_record_lifecycle(tmp_path):
    run = RunDir(tmp_path, "d20-residual-s0-abc")
    record = run.start({"depth": 20, "milestones": []}, device="cpu")
    assert record["status"] == "running" and record["end_time"] is None
    assert set(record["versions"]) == {"python", "torch", "torchvision"}
    run.write_metrics([(1, "train", "loss", 2.5), (1, "train", "accuracy", 0.1)])
    run.update(status="complete", steps_completed=1)
    assert run.status() == "complete"
    with pytest.raises(ValueError, match="status"):
        run.update(status="done")
    metrics = run.read_metrics()
    assert list(metrics.columns) == ["step", "split", "metric", "value"]
    assert metrics["value"].tolist() == [2.5, 0.1]


def test_start_clears_outputs_of_an_earlier_attempt(tmp_path):
    run = RunDir(tmp_path, "r")
    run.start({"depth": 20})
    run.write_metrics([(1, "train", "loss", 1.0)])
    run.stats_path.mkdir()
    (run.stats_path / "part-000000.parquet").write_bytes(b"old")
    run.start({"depth": 20})
    assert not run.metrics_path.exists()
    assert list(run.stats_path.iterdir()) == []


def test_load_runs_joins_config_and_reports_unreadable(tmp_path):
    for run_id, depth, loss in (("a", 20, 1.5), ("b", 56, 2.5)):
        run = RunDir(tmp_path, run_id)
        run.start({"depth": depth, "residual": True, "milestones": [3]})
        run.write_metrics([(1, "train", "loss", loss)])
        run.update(status="complete")
    broken = tmp_path / "c"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable run"):
        df = load_runs(tmp_path)
    assert sorted(df["run_id"]) == ["a", "b"]
    assert df.set_index("run_id").loc["b", "depth"] == 56
    assert df.set_index("run_id").loc["a", "value"] == 1.5
    assert (df["status"] == "complete").all()
    assert set(df.attrs["unreadable"]) == {"c"}

    runs = list_runs(tmp_path).set_index("run_id")
    assert runs.loc["c", "status"] == "unreadable"
    assert "JSONDecodeError" in runs.loc["c", "error"]
    assert runs.loc["a", "milestones"] == (3,)


def test_load_runs_of_missing_folder_is_empty(tmp_path):
    df = load_runs(tmp_path / "nothing")
    assert df.empty and "run_id" in df.columns


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_json(tmp_path / "a.json", {})
    write_parquet_atomic(store.metrics_frame([]), tmp_path / "m.parquet")
    for name in ("a.json", "m.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, file_events):
    with file_events() as events:
        atomic_write_json(tmp_path / "config.json", {"status": "running"})
    [(_, temp), replaced, folder] = events
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".config.json.")
    assert replaced == ("replace", temp) and folder == ("fsync", str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text()) == {"status": "running"}


def test_list_runs_notes_the_world_size(tmp_path):
    for run_id, extra in (("old", {}), ("ddp", {"world_size": 2})):
        run = RunDir(tmp_path, run_id)
        run.start({"depth": 8}, **extra)
        run.update(status="complete")
    assert list_runs(tmp_path).set_index("run_id")["world_size"].to_dict() == {"ddp": 2, "old": 1}


def test_metrics_read_while_a_writer_replaces_them_come_whole(tmp_path):
    run = RunDir(tmp_path, "r1")
    stop, written = threading.Event(), []

    def write() -> None:
        rows = []
        while not stop.is_set():
            rows.append((len(rows), "train", "loss", float(len(rows))))
            run.write_metrics(rows)
            written.append(len(rows))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = set()
        while len(written) < 40:  # 40 replacements of the file, read back-to-back meanwhile
            metrics = run.read_metrics()
            assert metrics["step"].tolist() == list(range(len(metrics)))
            seen.add(len(metrics))
    finally:
        stop.set()
        writer.join()
    assert len(seen) > 2  # the reads met several versions
