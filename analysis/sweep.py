"""Run a study notebook over a grid of depths and settings.

Each point of the grid (depths x variants x ``--set`` values) is one papermill
execution of a study kind's notebook (``--study``, default ``depth``:
``notebooks/depth_study.ipynb``; see :mod:`analysis.studies`) with YAML-typed
parameters, a pinned kernel and a per-cell timeout. A point lives in
``<runs_dir>/studies/<study_id>/``: the executed notebook under its source
name (kept also when it failed, with the error in it), papermill's log
``papermill.log``, the notebook's ``findings.json``, and ``study.json`` with
the status (``pending``, ``running``, ``complete`` or ``failed``), the error,
the run ids the notebook writes, the start and end times and the worker that
ran it.

Re-running a sweep skips the points that completed and retries the others; a
failed point (an exception, a killed kernel, a cell timeout) is recorded and
never stops the rest. Example::

    python -m analysis sweep --depths 20 56 110 --variants residual plain --seeds 0 1 2 --set optimizer=sgd,adam
    python -m analysis sweep --study init --set "depths=[8, 20, 56]"

Points run in parallel local worker processes by default (one papermill
process, and its kernel, per point), splitting the cores between them. With
``--scheduler tcp://HOST:PORT`` they run as tasks on an existing Dask
distributed cluster instead (``dask scheduler`` on one machine, ``dask worker
tcp://HOST:PORT --nworkers 1 --nthreads K`` on each, K points at a time).
There ``runs_dir`` and the notebook must be on a filesystem every worker
shares, at the same path, and each worker needs this package (and papermill
with a ``python3`` kernel) installed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import yaml

from analysis.checks import setting, shown
from analysis.extras import require
from analysis.frames import VARIANTS
from analysis.locks import FolderBusy, FolderLock, holder
from analysis.store import (STUDIES_DIR, STUDY_FILE, atomic_write_json, is_complete, notebook_error, read_study,
                            study_folder, study_row, utc_now)
from analysis.studies import KINDS, StudyKind, kind as study_kind

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_FILE = "papermill.log"
SWEEP_PARAMETERS = ("runs_dir", "threads", "findings_path")  # set by the sweep itself, left out of the study id
FINDINGS_FILE = "findings.json"
DEFAULT_CELL_TIMEOUT = 3600
KERNEL = "python3"
ERROR_TAIL_LINES = 5
POLL_SECONDS = 0.5
KILL_GRACE_SECONDS = 5.0


def study_id(parameters: Mapping[str, Any], kind: str = "depth") -> str:
    """A readable prefix and a hash of the parameters (those the sweep sets left out).

    Depth studies: ``d{depth}-{variants}-<hash>``; other kinds:
    ``{kind}-[d{depth}-]<hash>`` with the kind in the hash.
    """
    payload = {key: value for key, value in parameters.items() if key not in SWEEP_PARAMETERS}
    if kind != "depth":
        payload["kind"] = kind
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:10]
    if kind == "depth":
        return f"d{parameters['depth']}-{parameters['variants']}-{digest}"
    return f"{kind}-" + (f"d{parameters['depth']}-" if "depth" in parameters else "") + digest


@dataclass(frozen=True)
class Point:
    """One notebook execution: its study kind, the grid axes it takes (depth, variants) and its other parameters."""

    depth: int | None = None
    variants: str | None = "both"
    settings: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "depth"

    @property
    def parameters(self) -> dict[str, Any]:
        """The notebook parameters of this point (without those the sweep sets)."""
        axes = {"depth": self.depth, "variants": self.variants}
        return {**self.settings, **{name: axes[name] for name in study_kind(self.kind).axes}}

    @property
    def study_id(self) -> str:
        return study_id(self.parameters, self.kind)


def variants_parameter(variants: Iterable[str]) -> str:
    """The notebook's ``variants`` value: 'both' when residual and plain are both asked for."""
    chosen = set(variants)
    unknown = sorted(chosen - set(VARIANTS))
    if unknown or not chosen:
        raise ValueError(f"variants: {unknown or 'nothing'} given; choose from {', '.join(VARIANTS)}")
    if "both" in chosen or {"residual", "plain"} <= chosen:
        return "both"
    return chosen.pop()


def expand_grid(depths: Iterable[int] | None, variants: Iterable[str] | None = ("residual", "plain"),
                settings: Mapping[str, Any] | None = None, *, kind: str = "depth") -> list[Point]:
    """Every point of depths x settings values (Cartesian product), validated before any work.

    ``settings`` maps a notebook parameter to its list of values (a
    list-valued parameter such as milestones takes a list of lists);
    parameters not given keep the notebook defaults. Each point holds every
    parameter as the kind's ``validate_parameters`` normalises it (``lr=1``
    becomes 1.0), so its study id pins every value and an explicit default
    names the same study as none. ``depths`` and ``variants`` apply to the
    kinds that take them (see :mod:`analysis.studies`). Raises ValueError
    naming the bad field.
    """
    chosen = study_kind(kind)
    depths = list(dict.fromkeys(depths or []))
    if "depth" in chosen.axes and not depths:
        raise ValueError("depths: give at least one depth")
    if "depth" not in chosen.axes and depths:
        raise ValueError(f"depths: the {kind} study has no depth axis; set its parameters with --set")
    variant = variants_parameter(variants) if "variants" in chosen.axes else None
    settings = dict(settings or {})
    for key in settings:
        if key in chosen.axes:
            raise ValueError(f"{key}: set it with --{key}s, not --set" if key == "depth"
                             else f"{key}: set it with --{key}, not --set")
        if key == "findings_path":
            raise ValueError(f"{key}: set by the sweep (each study folder's {FINDINGS_FILE})")
        if key in SWEEP_PARAMETERS:
            raise ValueError(f"{key}: set by the sweep; use --{key.replace('_', '-')}")
        if key not in chosen.parameters:
            raise ValueError(f"{key}: not a parameter of the {kind} study; known parameters: "
                             f"{', '.join(chosen.parameters)}")
    grid = {key: list(value) if isinstance(value, (list, tuple)) else [value] for key, value in settings.items()}
    for key, values in grid.items():
        if not values:
            raise ValueError(f"{key}: give at least one value")
    points: dict[str, Point] = {}
    for depth in depths or [None]:
        axes = {name: value for name, value in (("depth", depth), ("variants", variant)) if name in chosen.axes}
        for combination in itertools.product(*grid.values()):
            checked = chosen.validate({**dict(zip(grid, combination)), **axes})
            point = Point(depth=depth, variants=variant, kind=kind,
                          settings={key: value for key, value in checked.to_dict().items()
                                    if key not in chosen.axes + SWEEP_PARAMETERS})
            points.setdefault(point.study_id, point)
    return list(points.values())


def parse_settings(items: Iterable[str]) -> dict[str, list[Any]]:
    """``['optimizer=sgd,adam', 'lr=0.1']`` -> ``{'optimizer': ['sgd', 'adam'], 'lr': [0.1]}``."""
    settings: dict[str, list[Any]] = {}
    for item in items:
        key, values = setting(item, "KEY=VALUE[,VALUE...]")
        if key in settings:
            raise ValueError(f"--set: {key} given twice; list its values once, comma-separated")
        settings[key] = values
    return settings


def with_seeds(settings: dict[str, list[Any]], seeds: Sequence[int] | None) -> dict[str, list[Any]]:
    """``settings`` with ``--seeds`` as the one value of the notebook's ``seeds`` (every point trains them all)."""
    if seeds is None:
        return settings
    if "seeds" in settings:
        raise ValueError("seeds: give them with --seeds or --set seeds=..., not both")
    return {**settings, "seeds": [list(seeds)]}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(points: int, cores: int | None = None) -> int:
    """Parallel points, at most one per point: one per two cores, or one per core on
    machines of two cores or fewer (kernel start-up and plotting are single-threaded,
    so two one-thread points keep two cores busier than one two-thread point)."""
    cores = cores or available_cores()
    cores_per_point = 2 if cores > 2 else 1
    return max(1, min(points, cores // cores_per_point))


def execute_point(point: Point, *, runs_dir: str | Path, notebook: str | Path | None, threads: int,
                  kernel: str = KERNEL, cell_timeout: int | None = DEFAULT_CELL_TIMEOUT,
                  worker: str | None = None, cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Execute one point with papermill in a subprocess; write and return its study record.

    The point's folder is locked for the whole execution (:mod:`analysis.locks`):
    a point that another sweep is executing is waited for, then taken as that
    sweep left it when complete (the returned record has ``skipped``), else run.
    ``notebook=None`` executes the point's kind's notebook. The executed notebook
    goes to a temporary name in the study folder and is renamed to the source
    notebook's name when papermill returns. ``cancelled`` is polled while waiting
    and while papermill runs; when it returns True, papermill and its kernel are
    stopped, the temporary notebook removed and the point recorded ``cancelled``.
    """
    runs_dir = Path(runs_dir)
    chosen = study_kind(point.kind)
    notebook = Path(notebook or chosen.notebook)
    folder = study_folder(runs_dir, point.study_id)
    try:
        lock = FolderLock(folder, cancelled=cancelled).acquire()
    except FolderBusy as busy:
        return {**(read_study(folder) or {}), "study_id": point.study_id, "status": "cancelled",
                "error": f"cancelled while waiting for {busy.holder}"}
    try:
        if is_complete(folder):
            return {**read_study(folder), "skipped": True}
        return _execute_locked(point, chosen, folder, lock, runs_dir=runs_dir, notebook=notebook, threads=threads,
                               kernel=kernel, cell_timeout=cell_timeout, worker=worker, cancelled=cancelled)
    finally:
        lock.release()


def _execute_locked(point: Point, chosen: StudyKind, folder: Path, lock: FolderLock, *, runs_dir: Path,
                    notebook: Path, threads: int, kernel: str, cell_timeout: int | None, worker: str | None,
                    cancelled: Callable[[], bool] | None) -> dict[str, Any]:
    """:func:`execute_point` once the point's folder is locked.

    papermill inherits the lock, so the folder stays locked for as long as
    papermill lives, and it dies with the thread that started it (Linux's
    parent-death signal); its kernel exits when papermill does.
    """
    final = folder / notebook.name
    final.unlink(missing_ok=True)
    partial = folder / f".{uuid.uuid4().hex}.{notebook.name}"
    parameters = {**point.parameters, **_sweep_values(chosen, runs_dir, threads, folder)}
    command = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()),
               sys.executable, "-m", "papermill", str(notebook), str(partial),
               "-y", yaml.safe_dump(parameters), "-k", kernel, "--cwd", str(REPO_ROOT),
               "--no-progress-bar", "--no-log-output"]
    if cell_timeout:
        command += ["--execution-timeout", str(int(cell_timeout))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": "PASSIVE"}
    record = {"study_id": point.study_id, "parameters": parameters, "status": "running", "error": None,
              "run_ids": chosen.run_ids(parameters), "start_time": utc_now(), "end_time": None,
              "worker": worker, "source_notebook": str(notebook), "kind": point.kind}
    interrupted = False
    with open(folder / LOG_FILE, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, pass_fds=(lock.fd,))
        try:
            record["worker"] = worker or f"{socket.gethostname()}/{process.pid}"
            atomic_write_json(folder / STUDY_FILE, record)
            interrupted = _wait(process, cancelled)
        except BaseException:  # SweepCancelled, where the sweep's own thread waits
            interrupted = True
            raise
        finally:
            _stop(process)
            if interrupted:
                partial.unlink(missing_ok=True)
                record.update(status="cancelled", error="cancelled before it finished", end_time=utc_now())
                atomic_write_json(folder / STUDY_FILE, record)
    if interrupted:
        return record
    if partial.exists():
        os.replace(partial, final)
    if process.returncode == 0 and final.exists():
        status, error = "complete", None
    else:
        log_text = (folder / LOG_FILE).read_text(errors="replace")
        status, error = "failed", failure_reason(process.returncode, log_text, final, cell_timeout)
    record.update(status=status, error=error, end_time=utc_now())
    atomic_write_json(folder / STUDY_FILE, record)
    return record


DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: the sweep's signal handlers still stop its points
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""
"""Run as ``python -c`` before papermill: papermill is killed when the sweep thread that started it
exits, even by SIGKILL (the exec keeps the parent-death signal)."""


def _sweep_values(chosen: StudyKind, runs_dir: Path, threads: int, folder: Path) -> dict[str, Any]:
    """The parameters the sweep sets, for those the kind's notebook takes."""
    values = {"runs_dir": str(runs_dir), "threads": threads, "findings_path": str(folder / FINDINGS_FILE)}
    return {name: value for name, value in values.items() if name in chosen.parameters}


def _wait(process: subprocess.Popen, cancelled: Callable[[], bool] | None) -> bool:
    """Wait for the process; True when it was cancelled instead."""
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            if cancelled is not None and cancelled():
                return True


def _stop(process: subprocess.Popen) -> None:
    """End papermill and every process it started (its kernel runs in a session of its own)."""
    if process.poll() is not None:
        return
    groups = [process.pid, *(_process_group(pid) for pid in _descendants(process.pid))]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in dict.fromkeys(group for group in groups if group):
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            process.wait(timeout=KILL_GRACE_SECONDS)
            if not any(_alive(group) for group in groups[1:] if group):
                return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; none where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def failure_reason(returncode: int | None, log_text: str, notebook: Path, cell_timeout: int | None) -> str:
    """A one-line reason: kernel death, cell timeout, the notebook's error, or papermill's last lines."""
    if "DeadKernelError" in log_text:
        return "kernel died"
    if "CellTimeoutError" in log_text or "Cell execution timed out" in log_text:
        return f"timeout after {cell_timeout} s"
    error = notebook_error(notebook)
    if error:
        return error
    lines = [line for line in log_text.splitlines() if line.strip()]
    return "\n".join(lines[-ERROR_TAIL_LINES:]) or f"papermill exited with status {returncode}"


class Progress:
    """Points done, running and failed: a tqdm bar on a terminal, nothing otherwise."""

    def __init__(self, total: int, *, done: int = 0, enabled: bool | None = None):
        from tqdm.auto import tqdm

        enabled = sys.stderr.isatty() if enabled is None else enabled
        self.offset = done
        self.bar = tqdm(total=total, initial=done, unit="point", desc="sweep", disable=not enabled,
                        file=sys.stderr)

    def __call__(self, done: int, running: int, failed: int) -> None:
        """Show ``done`` points finished in this sweep (on top of those skipped), ``running``, ``failed``."""
        self.bar.n = self.offset + done
        self.bar.set_postfix(running=running, failed=failed, refresh=True)

    def close(self) -> None:
        self.bar.close()


def run_sweep(points: Sequence[Point], *, runs_dir: str | Path = "runs", notebook: str | Path | None = None,
              workers: int | None = None, scheduler: str | None = None, threads: int | None = None,
              kernel: str = KERNEL, cell_timeout: int | None = DEFAULT_CELL_TIMEOUT,
              progress: bool | None = None) -> pd.DataFrame:
    """Execute every point not yet complete; one row per point with its status and error.

    ``workers`` parallel local executions (default: see ``default_workers``), each
    with ``threads`` = cores // workers torch threads unless given; or, with
    ``scheduler`` (``tcp://HOST:PORT``), Dask tasks on that cluster, each with
    its worker's cores // nthreads unless ``threads`` is given. ``progress``:
    None shows a bar only on a terminal. Points are taken as given (see
    :func:`expand_grid` for validation).
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: must be an integer >= 1, got {shown(workers)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: must be an integer >= 1, got {shown(threads)}")
    if cell_timeout is not None and cell_timeout < 0:
        raise ValueError(f"cell_timeout: must be seconds >= 0 (0 or None: no limit), got {shown(cell_timeout)}")
    if scheduler is not None and workers is not None:
        raise ValueError("workers: not used with scheduler (the cluster's workers run the points)")
    runs_dir = Path(runs_dir).resolve()
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ValueError(f"runs_dir: {runs_dir} is a file, not a folder")
    if notebook is not None:
        notebook = Path(notebook).resolve()
        if not notebook.is_file():
            raise ValueError(f"notebook: {notebook} does not exist")
    unique = {point.study_id: point for point in points}
    todo = [point for point in unique.values() if not is_complete(study_folder(runs_dir, point.study_id))]
    options = dict(runs_dir=runs_dir, notebook=notebook, kernel=kernel, cell_timeout=cell_timeout)
    bar = Progress(len(unique), done=len(unique) - len(todo), enabled=progress)
    try:
        with cancel_on_signals():
            outcomes = _run(todo, scheduler=scheduler, workers=workers, threads=threads, report=bar, **options)
    finally:
        bar.close()
    rows = []
    for point in points:
        folder = study_folder(runs_dir, point.study_id)
        record = outcomes.get(point.study_id) or read_study(folder)
        skipped = point.study_id not in outcomes or bool(outcomes[point.study_id].get("skipped"))
        rows.append({**study_row(record, folder), "skipped": skipped})
    return pd.DataFrame(rows)


def _run(todo: Sequence[Point], *, scheduler: str | None, workers: int | None, threads: int | None,
         report: Callable[[int, int, int], None], **options: Any) -> dict[str, dict]:
    """The points on local workers or on the Dask scheduler; their records by study id."""
    if not todo:
        return {}
    if scheduler is None:
        workers = workers or default_workers(len(todo))
        threads = threads or max(1, available_cores() // workers)
        return _run_local(todo, workers=workers, threads=threads, report=report, **options)
    return _run_dask(todo, scheduler=scheduler, threads=threads, report=report, **options)


def _mark_pending(points: Sequence[Point], runs_dir: Path, notebook: Path | None) -> None:
    """Write a ``pending`` record for each point about to be queued (not for one another sweep is executing)."""
    for point in points:
        folder = study_folder(runs_dir, point.study_id)
        if holder(folder) is None:
            atomic_write_json(folder / STUDY_FILE,
                              {"study_id": point.study_id, "parameters": point.parameters, "status": "pending",
                               "error": None, "run_ids": [], "start_time": None, "end_time": None, "worker": None,
                               "source_notebook": str(notebook or study_kind(point.kind).notebook),
                               "kind": point.kind})


def _mark_cancelled(points: Iterable[Point], runs_dir: Path) -> None:
    """Record queued points that a cancelled sweep never started as ``cancelled``."""
    for point in points:
        folder = study_folder(runs_dir, point.study_id)
        record = read_study(folder)
        if record is not None and record.get("status") == "pending" and holder(folder) is None:
            record.update(status="cancelled", error="cancelled before it started", end_time=utc_now())
            atomic_write_json(folder / STUDY_FILE, record)


class SweepCancelled(Exception):
    """The sweep received SIGINT, SIGTERM or SIGHUP; its points were stopped and recorded ``cancelled``."""

    def __init__(self, signum: int):
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[None]:
    """Turn the first SIGINT, SIGTERM or SIGHUP into :class:`SweepCancelled` in the main thread.

    The sweep then stops its points and records them before it exits; later
    signals are ignored while it does (SIGKILL still ends it at once, and its
    papermill processes with it). Outside the main thread nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def cancel(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
            raise SweepCancelled(signum)

    previous = {sig: signal.signal(sig, cancel) for sig in CANCEL_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_local(points: Sequence[Point], *, workers: int, report: Callable[[int, int, int], None],
               **options: Any) -> dict[str, dict]:
    """Points on a local pool; each pool thread drives one papermill process."""
    _mark_pending(points, options["runs_dir"], options["notebook"])
    stop = threading.Event()
    outcomes: dict[str, dict] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep")
    futures: dict[Future, Point] = {
        pool.submit(execute_point, point, cancelled=stop.is_set, **options): point for point in points}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                point = futures[future]
                outcomes[point.study_id] = (_task_failed(point, options["runs_dir"], future.exception())
                                            if future.exception() else future.result())
            failed = sum(record["status"] == "failed" for record in outcomes.values())
            report(len(outcomes), sum(future.running() for future in pending), failed)
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        _mark_cancelled(points, options["runs_dir"])
        raise
    pool.shutdown(wait=True)
    return outcomes


def _execute_on_dask_worker(point: Point, *, threads: int | None, cancel_event: str,
                            **options: Any) -> dict[str, Any]:
    """A Dask task: run the point on this worker with its share of the host's cores, until the sweep's
    cancel event is set."""
    from distributed import Event, get_worker

    worker = get_worker()
    threads = threads or max(1, available_cores() // worker.state.nthreads)
    event = Event(cancel_event)
    return execute_point(point, threads=threads, worker=worker.address, cancelled=event.is_set, **options)


def _run_dask(points: Sequence[Point], *, scheduler: str, threads: int | None,
              report: Callable[[int, int, int], None], **options: Any) -> dict[str, dict]:
    """Points as tasks on an existing Dask cluster; the study records are written by the workers.

    Cancelling the sweep sets a Dask event that the running points poll: they stop
    their papermill processes and record ``cancelled``; queued tasks are dropped.
    """
    require("distributed", "cluster", feature="--scheduler (a sweep on a Dask cluster)")
    from distributed import Client, Event, as_completed, wait as wait_all

    outcomes: dict[str, dict] = {}
    try:
        client = Client(scheduler)
    except OSError as exc:
        raise ConnectionError(f"scheduler: cannot reach {scheduler}: {exc}") from None
    with client:
        _mark_pending(points, options["runs_dir"], options["notebook"])
        cancel_event = f"analysis-sweep-{uuid.uuid4().hex}"
        futures = {client.submit(_execute_on_dask_worker, point, threads=threads, cancel_event=cancel_event,
                                 pure=False, **options): point for point in points}
        slots = max(1, sum(client.nthreads().values()))
        report(0, min(slots, len(points)), 0)
        try:
            for future in as_completed(futures):
                point = futures[future]
                if future.status == "finished":
                    outcomes[point.study_id] = future.result()
                else:
                    outcomes[point.study_id] = _task_failed(point, options["runs_dir"], future.exception())
                failed = sum(record["status"] == "failed" for record in outcomes.values())
                report(len(outcomes), min(slots, len(points) - len(outcomes)), failed)
        except BaseException:
            Event(cancel_event, client=client).set()
            running = [future for future in futures if future.status == "pending"]
            wait_all(running, timeout=KILL_GRACE_SECONDS * 4)
            client.cancel(list(futures))
            _mark_cancelled(points, options["runs_dir"])
            raise
    return outcomes


def _task_failed(point: Point, runs_dir: Path, exc: BaseException | None) -> dict[str, Any]:
    """Record a point whose task itself raised (its Dask worker was lost, a full disk, ...)."""
    folder = study_folder(runs_dir, point.study_id)
    record = read_study(folder) or {"study_id": point.study_id, "parameters": point.parameters, "run_ids": [],
                                    "start_time": None, "worker": None}
    record.update(status="failed", error=f"{type(exc).__name__}: {exc}", end_time=utc_now())
    atomic_write_json(folder / STUDY_FILE, record)
    return record


def summary_line(results: pd.DataFrame, runs_dir: str | Path) -> str:
    """``sweep: 4 points: 3 complete (2 skipped), 1 failed; studies in runs/studies``."""
    complete = int((results["status"] == "complete").sum())
    skipped = int((results["skipped"] & (results["status"] == "complete")).sum())
    failed = len(results) - complete
    points = f"{len(results)} point" + ("" if len(results) == 1 else "s")
    return (f"sweep: {points}: {complete} complete ({skipped} skipped), {failed} failed; "
            f"studies in {Path(runs_dir) / STUDIES_DIR}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", default="depth", choices=list(KINDS),
                        help="the kind of study (default: depth); see analysis.studies")
    parser.add_argument("--depths", type=int, nargs="+", default=None,
                        help="network depths, one point each (depth and lesion studies)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["residual", "plain"],
                        help="residual, plain or both (default: both, trained side by side in one notebook)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds each point trains every variant with (default: the notebook's, 0 1 2)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=V1[,V2...]",
                        help="a notebook parameter and its values (YAML scalars); repeat for a grid")
    parser.add_argument("--notebook", type=Path, default=None,
                        help="notebook to execute (default: the study kind's notebook in this package)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="runs and studies folder (default: runs)")
    parser.add_argument("--workers", type=int, default=None, help="parallel local points (default: cores // 2, or cores on 2 cores or fewer)")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="run the points on this Dask scheduler's workers instead")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per point (default: cores // workers)")
    parser.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel name (default: {KERNEL})")
    parser.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT,
                        help=f"seconds per notebook cell, 0 for no limit (default: {DEFAULT_CELL_TIMEOUT})")


def run(args: argparse.Namespace) -> int:
    """The command: exit status 0 if every point completed, 1 if any did not (bad input: see ``__main__``)."""
    points = expand_grid(args.depths, args.variants, with_seeds(parse_settings(args.settings), args.seeds),
                         kind=args.study)
    results = run_sweep(points, runs_dir=args.runs_dir, notebook=args.notebook, workers=args.workers,
                        scheduler=args.scheduler, threads=args.threads, kernel=args.kernel,
                        cell_timeout=args.cell_timeout)
    print(summary_line(results, args.runs_dir))
    for row in results[results["status"] != "complete"].itertuples():
        print(f"{row.status} {row.study_id}: {row.error}", file=sys.stderr)
    return 0 if (results["status"] == "complete").all() else 1
