"""Sweeps: grid expansion and validation, local and Dask execution, failures, re-runs."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from analysis import store, study, sweep
from analysis.config import TrainConfig
from analysis.store import RunDir
from conftest import TINY_STUDY

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_probe.ipynb"
TINY = {**TINY_STUDY, "steps": 3, "image_size": 16, "val_every": 3, "stats_every": 1}


def probe(behaviour: str, depth: int = 8) -> sweep.Point:
    """A point of the probe notebook, which logs its execution and then behaves as asked."""
    return sweep.Point(depth=depth, variants="both", settings={"behaviour": behaviour})


def executions(runs_dir: Path) -> list[dict]:
    path = runs_dir / "executions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record(runs_dir: Path, point: sweep.Point) -> dict:
    return json.loads((sweep.study_folder(runs_dir, point.study_id) / sweep.STUDY_FILE).read_text())


# ---------------------------------------------------------------------------- grid


def test_expand_grid_is_the_product_with_defaults_filled():
    points = sweep.expand_grid([20, 56], ["residual", "plain"], {"optimizer": ["sgd", "adam"], "lr": [0.1, 0.01]})
    assert len(points) == 2 * 2 * 2
    combos = {(p.depth, p.settings["optimizer"], p.settings["lr"]) for p in points}
    assert combos == {(d, o, lr) for d in (20, 56) for o in ("sgd", "adam") for lr in (0.1, 0.01)}
    defaults = {k: v for k, v in study.parameter_defaults().items()
                if k not in ("depth", "variants", "runs_dir", "threads", "findings_path")}
    for point in points:
        assert point.variants == "both"
        assert point.parameters == {**defaults, "optimizer": point.settings["optimizer"],
                                    "lr": point.settings["lr"], "depth": point.depth, "variants": "both"}
        assert point.study_id.startswith(f"d{point.depth}-both-")
    assert len({p.study_id for p in points}) == len(points)


def test_one_variant_and_duplicates():
    points = sweep.expand_grid([20, 20, 8], ["plain"])
    assert [(p.depth, p.variants) for p in points] == [(20, "plain"), (8, "plain")]
    assert sweep.expand_grid([8], ["residual"])[0].variants == "residual"
    assert sweep.expand_grid([8], ["both"])[0].variants == "both"
    # An explicit default, or an int for a float, names the same study as leaving it out.
    assert sweep.expand_grid([8], ["plain"], {"seeds": [[0, 1, 2]], "momentum": [0.9]}) == sweep.expand_grid([8], ["plain"])
    assert sweep.expand_grid([8], ["plain"], {"lr": [1]}) == sweep.expand_grid([8], ["plain"], {"lr": [1.0]})
    assert sweep.expand_grid([8], ["plain"], {"lr": [1]})[0].settings["lr"] == 1.0


def test_study_id_hashes_parameters_without_runs_dir_and_threads():
    point = sweep.Point(depth=8, variants="plain", settings={"lr": 0.1})
    digest = hashlib.sha256(json.dumps({"depth": 8, "lr": 0.1, "variants": "plain"}, sort_keys=True).encode())
    assert point.study_id == f"d8-plain-{digest.hexdigest()[:10]}"
    assert sweep.study_id({**point.parameters, "runs_dir": "/x", "threads": 3}) == point.study_id
    assert replace(point, settings={"lr": 0.2}).study_id != point.study_id


def test_settings_are_yaml_scalars():
    assert sweep.parse_settings(["lr=0.1,0.01", "optimizer=sgd,adam", "steps=3", "width=None,8",
                                 "weight_decay=1e-4", "milestones=[10, 20],[30]", "nesterov=true"]) == {
        "lr": [0.1, 0.01], "optimizer": ["sgd", "adam"], "steps": [3], "width": [None, 8],
        "weight_decay": [1e-4], "milestones": [[10, 20], [30]], "nesterov": [True]}


@pytest.mark.parametrize("settings, field", [
    ({"dpeth": [3]}, "dpeth"),
    ({"optimizer": ["sgd", "rmsprop"]}, "optimizer"),
    ({"lr": [-1.0]}, "lr"),
    ({"runs_dir": ["elsewhere"]}, "runs_dir"),
    ({"threads": [2]}, "threads"),
    ({"depth": [8]}, "depth"),
    ({"steps": []}, "steps"),
])
def test_grid_errors_name_the_field(settings, field):
    with pytest.raises(ValueError, match=field):
        sweep.expand_grid([8], ["residual"], settings)


def test_bad_depths_and_variants():
    with pytest.raises(ValueError, match="depth"):
        sweep.expand_grid([7], ["residual"])
    with pytest.raises(ValueError, match="depths"):
        sweep.expand_grid([], ["residual"])
    with pytest.raises(ValueError, match="variants.*both, residual, plain"):
        sweep.expand_grid([8], ["resnet"])
    for bad in (["lr"], ["=1"], ["lr="], ["lr=1", "lr=2"]):
        with pytest.raises(ValueError, match="--set"):
            sweep.parse_settings(bad)


@pytest.mark.parametrize("item, message", [
    ("optimizer=sgd,'adam", "--set optimizer: \"sgd,'adam\" is not a comma-separated list of YAML values"),
    ("lr=0.1,[", "--set lr: '0.1,[' is not a comma-separated list of YAML values"),
    ("lr=[1", "--set lr: '[1' is not a comma-separated list of YAML values"),
    ("lr=0.1]: [2", "--set lr: '0.1]: [2' is not a comma-separated list of YAML values"),
])
def test_malformed_set_values_are_an_error_not_dropped(item, message):
    with pytest.raises(ValueError) as error:
        sweep.parse_settings([item])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ValueError) as error:
        sweep.parse_settings(["lr=[" + "1" * 100_000])
    assert len(str(error.value)) < 300 and "(100003 characters)" in str(error.value)
    with pytest.raises(ValueError) as error:
        sweep.expand_grid([8], ["residual"], {"optimizer": ["x" * 100_000]})
    assert len(str(error.value)) < 300


def test_list_studies_of_nothing(tmp_path):
    studies = store.list_studies(tmp_path)
    assert studies.empty
    assert {"study_id", "status", "error", "depth", "variants", "notebook", "run_ids"} <= set(studies.columns)


# ---------------------------------------------------------------------------- local execution


def test_failure_is_recorded_and_rerun_retries_only_it(tmp_path, capsys):
    ok, bad = probe("ok"), probe("raise")
    results = sweep.run_sweep([ok, bad], runs_dir=tmp_path, notebook=FIXTURE, workers=2, cell_timeout=60)
    assert capsys.readouterr() == ("", "")  # no terminal, no progress bar
    assert list(results["study_id"]) == [ok.study_id, bad.study_id]
    assert list(results["status"]) == ["complete", "failed"]
    assert pd.isna(results["error"].iloc[0])
    assert results["error"].iloc[1] == "RuntimeError: asked to fail at depth 8"
    assert not results["skipped"].any()
    # Two workers on this machine's cores: each point got its share, in the notebook and in OpenMP.
    threads = max(1, sweep.available_cores() // 2)
    for run in executions(tmp_path):
        assert (run["threads"], run["omp"], run["cwd"]) == (threads, str(threads), str(sweep.REPO_ROOT))
    for point, status in ((ok, "complete"), (bad, "failed")):
        folder = sweep.study_folder(tmp_path, point.study_id)
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "papermill.log", "study.json", FIXTURE.name]
        stored = record(tmp_path, point)
        assert stored["status"] == status and stored["kind"] == "depth"
        assert stored["parameters"] == {**point.parameters, "runs_dir": str(tmp_path), "threads": threads,
                                        "findings_path": str(folder / "findings.json")}
        assert stored["start_time"] <= stored["end_time"]
        assert stored["worker"].startswith(socket.gethostname() + "/")
    # The failed notebook is kept, with the error in it.
    assert "asked to fail" in (sweep.study_folder(tmp_path, bad.study_id) / FIXTURE.name).read_text()

    first = record(tmp_path, ok)
    again = sweep.run_sweep([ok, bad], runs_dir=tmp_path, notebook=FIXTURE, workers=2, cell_timeout=60,
                            progress=True)
    bar = capsys.readouterr().err
    assert "1/2" in bar and "2/2" in bar and "failed=1" in bar
    assert list(again["status"]) == ["complete", "failed"]
    assert list(again["skipped"]) == [True, False]
    assert record(tmp_path, ok) == first
    assert [run["behaviour"] for run in executions(tmp_path)].count("ok") == 1
    assert [run["behaviour"] for run in executions(tmp_path)].count("raise") == 2

    studies = store.list_studies(tmp_path).set_index("study_id")
    assert studies.loc[ok.study_id, "status"] == "complete"
    assert studies.loc[bad.study_id, "error"] == "RuntimeError: asked to fail at depth 8"
    assert studies.loc[ok.study_id, "notebook"] == str(sweep.study_folder(tmp_path, ok.study_id) / FIXTURE.name)

    # A record that says complete without its notebook is run again.
    (sweep.study_folder(tmp_path, ok.study_id) / FIXTURE.name).unlink()
    assert list(sweep.run_sweep([ok], runs_dir=tmp_path, notebook=FIXTURE, workers=1)["skipped"]) == [False]
    assert [run["behaviour"] for run in executions(tmp_path)].count("ok") == 2


def test_timeout_and_dead_kernel_are_failures(tmp_path):
    sleeper, dies = probe("sleep"), probe("die")
    results = sweep.run_sweep([sleeper, dies], runs_dir=tmp_path, notebook=FIXTURE, workers=2, cell_timeout=2)
    assert list(results["status"]) == ["failed", "failed"]
    assert list(results["error"]) == ["timeout after 2 s", "kernel died"]
    assert record(tmp_path, sleeper)["error"] == "timeout after 2 s"


def test_a_point_whose_execution_raises_is_recorded(tmp_path, monkeypatch):
    def full_disk(point, **options):
        raise OSError("No space left on device")

    monkeypatch.setattr(sweep, "execute_point", full_disk)
    results = sweep.run_sweep([probe("ok")], runs_dir=tmp_path, notebook=FIXTURE, workers=1)
    assert list(results["error"]) == ["OSError: No space left on device"]
    assert record(tmp_path, probe("ok"))["status"] == "failed"


def test_depth_study_sweep_with_an_invalid_point(tmp_path):
    """The real notebook at tiny size; a point injected past validation fails in the notebook, naming the field."""
    [good] = sweep.expand_grid([8], ["both"], {key: [value] for key, value in TINY.items()})
    bad = replace(good, settings={**good.settings, "optimizer": "rmsprop"})
    results = sweep.run_sweep([good, bad], runs_dir=tmp_path, workers=2).set_index("study_id")
    assert results.loc[good.study_id, "status"] == "complete", results.loc[good.study_id, "error"]
    assert results.loc[bad.study_id, "status"] == "failed"
    assert results.loc[bad.study_id, "error"].startswith("ParameterError: optimizer: 'rmsprop' is not one of")
    run_ids = results.loc[good.study_id, "run_ids"]
    expected = study.run_ids_for(study.validate_parameters(good.parameters))
    assert run_ids == expected and len(run_ids) == 2 * len(good.settings["seeds"])
    for run_id in run_ids:
        stored = RunDir(tmp_path, run_id).record()
        assert stored["status"] == "complete"
        assert TrainConfig.from_dict(stored["config"]).steps == 3


def test_seeds_option_sets_the_notebooks_seeds():
    assert sweep.with_seeds({"lr": [0.1]}, None) == {"lr": [0.1]}
    assert sweep.with_seeds({"lr": [0.1]}, [0, 1]) == {"lr": [0.1], "seeds": [[0, 1]]}
    with pytest.raises(ValueError, match="^seeds: "):
        sweep.with_seeds({"seeds": [[0]]}, [1])
    [point] = sweep.expand_grid([8], ["both"], sweep.with_seeds({}, [0, 1]))
    assert point.settings["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="^findings_path: set by the sweep"):
        sweep.expand_grid([8], ["both"], {"findings_path": ["x.json"]})


def test_cli_reports_bad_input_and_summarizes(tmp_path, capsys):
    from analysis.__main__ import main

    assert main(["sweep", "--depths", "8", "--set", "dpeth=3", "--runs-dir", str(tmp_path)]) == 2
    assert "dpeth" in capsys.readouterr().err
    assert main(["sweep", "--depths", "8", "--variants", "plain", "--set", "steps=3", "--set", "warmup_steps=0",
                 "--notebook", str(FIXTURE),
                 "--runs-dir", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"sweep: 1 point: 1 complete (0 skipped), 0 failed; studies in {tmp_path / 'studies'}"]
    [run] = executions(tmp_path)
    assert (run["depth"], run["variants"], run["threads"]) == (8, "plain", sweep.available_cores())


# ---------------------------------------------------------------------------- dask


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real ``dask scheduler`` and one ``dask worker`` (one thread) on 127.0.0.1.

    Yields the scheduler's address and the worker's; both processes are ended on teardown.
    """
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    processes = []
    try:
        for name, command in (
            ("scheduler", [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]),
            ("worker", [dask, "worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                        "--no-dashboard", "--local-directory", str(tmp_path / "dask-scratch")]),
        ):
            with open(logs / f"{name}.log", "wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                                  start_new_session=True))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            [worker] = client.scheduler_info()["workers"]
        yield address, worker
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def test_dask_sweep_through_scheduler_and_worker(tmp_path, dask_cluster):
    from analysis.__main__ import main

    address, worker = dask_cluster
    runs_dir = tmp_path / "runs"
    argv = ["sweep", "--depths", "8", "--variants", "residual", "--scheduler", address, "--runs-dir", str(runs_dir),
            "--set", "optimizer=sgd,adam"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    studies = store.list_studies(runs_dir)
    assert sorted(studies["optimizer"]) == ["adam", "sgd"]
    assert list(studies["status"]) == ["complete", "complete"]
    assert list(studies["worker"]) == [worker, worker]
    # One worker thread on this host: each point may use every core.
    assert list(studies["threads"]) == [sweep.available_cores()] * 2
    for run_ids in studies["run_ids"]:
        [run_id] = run_ids
        assert RunDir(runs_dir, run_id).status() == "complete"
    # Run again: nothing left to do.
    assert main(argv) == 0
    assert list(store.list_studies(runs_dir)["start_time"]) == list(studies["start_time"])


def test_default_workers_split_the_cores():
    from analysis.sweep import default_workers

    assert default_workers(5, cores=2) == 2
    assert default_workers(1, cores=2) == 1
    assert default_workers(10, cores=16) == 8
    assert default_workers(3, cores=1) == 1


def test_other_study_kinds_expand_with_their_own_parameters():
    [init] = sweep.expand_grid(None, None, {"depths": [[8, 14]], "seeds": [[0]]}, kind="init")
    assert init.kind == "init" and init.study_id.startswith("init-") and "depth" not in init.parameters
    assert init.parameters["depths"] == [8, 14] and init.parameters["variants"] == "both"
    assert sweep.study_id(init.parameters, "init") != sweep.study_id(init.parameters, "costs")
    lesions = sweep.expand_grid([20, 56], None, {"seeds": [[0, 1]]}, kind="lesion")
    assert [point.study_id.split("-")[:2] for point in lesions] == [["lesion", "d20"], ["lesion", "d56"]]
    assert "variants" not in lesions[0].parameters and lesions[0].parameters["depth"] == 20
    [costs] = sweep.expand_grid(None, None, {}, kind="costs")
    assert costs.parameters["seeds"] == [0, 1]  # the notebook's default
    with pytest.raises(ValueError, match="^depths: the init study has no depth axis"):
        sweep.expand_grid([8], None, {}, kind="init")
    with pytest.raises(ValueError, match="^depths: give at least one depth"):
        sweep.expand_grid(None, None, {}, kind="lesion")
    with pytest.raises(ValueError, match="^lr: not a parameter of the init study"):
        sweep.expand_grid(None, None, {"lr": [0.1]}, kind="init")
    with pytest.raises(ValueError, match="^study: 'nope' is not one of"):
        sweep.expand_grid(None, None, {}, kind="nope")
    # The sweep sets only the parameters a kind's notebook takes.
    from analysis.studies import KINDS

    assert "runs_dir" not in KINDS["init"].parameters and "findings_path" in KINDS["init"].parameters


# ---------------------------------------------------------------------------- cancellation and concurrency


SWEEP_SCRIPT = """
import sys
from analysis import sweep
points = [sweep.Point(depth=8, variants="both", settings={"behaviour": b}) for b in sys.argv[3:]]
try:
    sweep.run_sweep(points, runs_dir=sys.argv[1], notebook=sys.argv[2], workers=len(points))
except sweep.SweepCancelled as exc:  # as `python -m analysis sweep` reports it
    print(exc, file=sys.stderr)
    sys.exit(128 + exc.signum)
"""


def start_sweep(runs_dir: Path, *behaviours: str) -> subprocess.Popen:
    """A sweep of probe points (one per behaviour, run in parallel) in a process of its own."""
    return subprocess.Popen([sys.executable, "-c", SWEEP_SCRIPT, str(runs_dir), str(FIXTURE), *behaviours],
                            cwd=sweep.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(condition, timeout: float = 300.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_sweep_leaves_no_process_and_a_rerun_completes_only_what_is_missing(tmp_path, sig):
    process = start_sweep(tmp_path, "ok", "wait")
    started = wait_for(lambda: {run["behaviour"]: run for run in executions(tmp_path)}.keys() >= {"ok", "wait"}
                       and sweep.is_complete(sweep.study_folder(tmp_path, probe("ok").study_id)),
                       what="both points to start and 'ok' to complete")
    assert started
    children = sweep._descendants(process.pid)
    kernel = next(run["pid"] for run in executions(tmp_path) if run["behaviour"] == "wait")
    assert kernel in children
    os.kill(process.pid, sig)
    process.wait(timeout=60)
    assert process.returncode == -sig if sig == signal.SIGKILL else process.returncode == 128 + sig
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=30, what="the sweep's processes to end")

    waiting = sweep.study_folder(tmp_path, probe("wait").study_id)
    row = store.list_studies(tmp_path).set_index("study_id").loc[probe("wait").study_id]
    if sig == signal.SIGKILL:  # nothing ran after the kill: the record still says running, readers see why not
        assert record(tmp_path, probe("wait"))["status"] == "running"
        assert row["status"] == "interrupted" and "stopped before it finished" in row["error"]
    else:
        assert "cancelled by SIGTERM" in process.stderr.read()
        assert row["status"] == "cancelled" and record(tmp_path, probe("wait"))["status"] == "cancelled"
        assert not [path.name for path in waiting.iterdir() if path.name.endswith(".ipynb")]  # no temporary notebook

    (tmp_path / "release").touch()
    again = sweep.run_sweep([probe("ok"), probe("wait")], runs_dir=tmp_path, notebook=FIXTURE, workers=2)
    assert list(again["status"]) == ["complete", "complete"] and list(again["skipped"]) == [True, False]
    behaviours = [run["behaviour"] for run in executions(tmp_path)]
    assert behaviours.count("ok") == 1 and behaviours.count("wait") == 2


def test_concurrent_identical_sweeps_execute_each_point_once(tmp_path):
    first = start_sweep(tmp_path, "ok", "wait")
    wait_for(lambda: {run["behaviour"] for run in executions(tmp_path)} >= {"ok", "wait"}, what="the first sweep")
    second = start_sweep(tmp_path, "ok", "wait")
    # The second sweep skips the completed point and its worker thread waits for the lock on the other.
    wait_for(lambda: len(os.listdir(f"/proc/{second.pid}/task")) >= 2, what="the second sweep's worker")
    (tmp_path / "release").touch()
    for process in (first, second):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert sorted(run["behaviour"] for run in executions(tmp_path)) == ["ok", "wait"]
    assert [record(tmp_path, probe(b))["status"] for b in ("ok", "wait")] == ["complete", "complete"]
