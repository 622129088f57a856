"""Run folders on disk: atomic writes, run records, and loading many runs.

A run lives in ``<root>/<run_id>/``:

- ``config.json``: the run record: ``run_id``, ``config`` (every TrainConfig
  field), ``status`` (``running|complete|failed|diverged``), ``error``,
  ``diverged_step``, ``steps_completed``, ``device``, ``world_size``, ``model``
  (summary), ``versions`` (python, torch, torchvision), ``git_commit``,
  ``start_time`` and ``end_time`` (ISO 8601, UTC).
- ``metrics.parquet``: tidy long metrics with columns ``step, split, metric, value``.
- ``stats.parquet/``: per-layer hook statistics (a folder of Parquet parts).
- ``.lock``: the lock a trainer holds for the whole run (:mod:`analysis.locks`).

Every file is written to a temporary file in the same folder, fsync'd and
renamed into place (and the folder fsync'd), so a run killed at any moment
leaves no truncated file. A killed run's stored status stays ``running``; as
nobody holds its lock any more, readers (:meth:`RunDir.status`,
:func:`list_runs`, :func:`load_runs`) see it as ``interrupted``, with an error
saying it stopped without finishing. ``interrupted`` is never written to a
record: a trainer that takes the run over starts it afresh.
"""
from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from analysis.locks import FolderLock, holder

STATUSES = ("running", "complete", "failed", "diverged")
"""The statuses a run record stores; readers also see ``interrupted`` (:func:`observed`)."""
INTERRUPTED = "interrupted"
INTERRUPTED_ERROR = "the run stopped without finishing (no process holds its folder's lock)"
FINISHED = ("complete", "diverged")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.parquet"
STATS_DIR = "stats.parquet"
MODEL_FILE = "model.pt"
METRIC_COLUMNS = ("step", "split", "metric", "value")


def _default_file_mode() -> int:
    """rw for everyone the umask allows, as open() would give (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _default_file_mode()
"""Mode of every file this package writes atomically (mkstemp alone would give 0600)."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(path: str | Path) -> None:
    """Make the renames into folder ``path`` durable (a crash after the rename cannot undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame to Parquet (pyarrow) atomically."""
    atomic_write_bytes(path, df.to_parquet(engine="pyarrow", index=False))


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment_versions() -> dict[str, str]:
    """Versions of Python, torch and torchvision."""
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}


def git_commit(directory: str | Path | None = None) -> str | None:
    """The commit checked out where this package lives, or None outside a git repo."""
    directory = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _in_folder(name: str, doc: str) -> property:
    """A path property: ``name`` inside the folder's ``path``."""
    return property(lambda self: self.path / name, doc=doc)


class RunDir:
    """One run's folder and its record (``config.json``)."""

    config_path = _in_folder(CONFIG_FILE, "The run record.")
    metrics_path = _in_folder(METRICS_FILE, "Tidy metrics: step, split, metric, value.")
    stats_path = _in_folder(STATS_DIR, "The hook statistics: a folder of Parquet parts.")
    model_path = _in_folder(MODEL_FILE, "The trained weights (``state_dict``), written when training ends "
                                        "without an error.")

    def __init__(self, root: str | Path, run_id: str):
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / run_id

    def save_model(self, state_dict: dict[str, Any]) -> None:
        """Write the model's weights atomically (CPU tensors, so any machine can read them)."""
        import torch

        buffer = io.BytesIO()
        torch.save({name: tensor.detach().cpu() for name, tensor in state_dict.items()}, buffer)
        atomic_write_bytes(self.model_path, buffer.getvalue())

    def exists(self) -> bool:
        return self.config_path.exists()

    def lock(self, *, wait: bool = True) -> FolderLock:
        """The run folder's lock, held by the one process that trains the run (a context manager)."""
        return FolderLock(self.path, wait=wait)

    def record(self) -> dict[str, Any]:
        """The run record as stored."""
        return json.loads(self.config_path.read_text())

    def status(self) -> str | None:
        """The status as readers see it (:func:`observed`), or None when there is no readable record."""
        try:
            return observed(self.record(), self.path).get("status")
        except (OSError, ValueError):
            return None

    def start(self, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Begin a fresh run: clear old outputs and write a ``running`` record."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path.unlink(missing_ok=True)
        self.model_path.unlink(missing_ok=True)
        if self.stats_path.is_dir():
            for part in self.stats_path.iterdir():
                part.unlink()
        record = {
            "run_id": self.run_id,
            "config": config,
            "status": "running",
            "error": None,
            "diverged_step": None,
            "diverged_layer": None,
            "steps_completed": 0,
            "versions": environment_versions(),
            "git_commit": git_commit(),
            "start_time": utc_now(),
            "end_time": None,
            **extra,
        }
        atomic_write_json(self.config_path, record)
        return record

    def update(self, **fields: Any) -> dict[str, Any]:
        """Change fields of the record (read, modify, atomic rewrite)."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status: {fields['status']!r} is not one of {', '.join(STATUSES)}")
        record = {**self.record(), **fields}
        atomic_write_json(self.config_path, record)
        return record

    def write_metrics(self, rows: list[tuple[int, str, str, float]]) -> None:
        """Replace ``metrics.parquet`` with these (step, split, metric, value) rows."""
        write_parquet_atomic(metrics_frame(rows), self.metrics_path)

    def read_metrics(self) -> pd.DataFrame:
        """The metrics, read in one go from one open file: a trainer replacing them meanwhile (temp + rename)
        cannot mix two versions, as a reader that opens the path again for each part can."""
        if not self.metrics_path.exists():
            return metrics_frame([])
        return pd.read_parquet(io.BytesIO(self.metrics_path.read_bytes()))


def metrics_frame(rows: list[tuple[int, str, str, float]]) -> pd.DataFrame:
    """A tidy metrics DataFrame with stable dtypes, also when empty."""
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    return df.astype({"step": "int64", "split": "string", "metric": "string", "value": "float64"})


def observed(record: dict[str, Any], folder: str | Path, error: str = INTERRUPTED_ERROR) -> dict[str, Any]:
    """``record`` as readers should see it: ``interrupted`` (with ``error``) when it says ``running`` but nobody
    holds ``folder``'s lock.

    A trainer (or a sweep executing a study point) holds the lock from before it
    writes ``running`` until after it writes the final status, and the operating
    system releases it when that process dies; so a ``running`` record without a
    holder belongs to work that was killed (or lost its machine) before it finished.
    """
    if isinstance(record, dict) and record.get("status") == "running" and holder(folder) is None:
        return {**record, "status": INTERRUPTED, "error": record.get("error") or error}
    return record


def run_dirs(root: str | Path) -> list[Path]:
    """Folders under ``root`` that hold a run record, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/{CONFIG_FILE}"))


def _flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """One flat row: the run's bookkeeping plus its config fields (records before ``world_size`` had one process)."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{CONFIG_FILE} does not hold a run record (an object with a 'config' object)")
    row = {key: record.get(key) for key in
           ("run_id", "status", "error", "diverged_step", "diverged_layer", "steps_completed", "device", "start_time",
            "end_time")}
    row["world_size"] = record.get("world_size", 1)
    for key, value in (record.get("model") or {}).items():
        row[f"model_{key}"] = value
    for key, value in record["config"].items():
        row[key] = tuple(value) if isinstance(value, list) else value
    return row


def list_runs(root: str | Path) -> pd.DataFrame:
    """One row per run under ``root``: status (as :func:`observed` sees it), error, summary and config fields.

    Unreadable records are reported as rows with status ``unreadable`` and the
    reason in ``error``, never raised.
    """
    rows = []
    for path in run_dirs(root):
        try:
            record = observed(json.loads((path / CONFIG_FILE).read_text()), path)
            rows.append({**_flat_record(record), "path": str(path)})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            rows.append({"run_id": path.name, "status": "unreadable", "error": f"{type(exc).__name__}: {exc}",
                         "path": str(path)})
    # Object columns: a setting missing from one record must not turn the others' ints into floats.
    return pd.DataFrame(rows, dtype=object)


def load_runs(root: str | Path) -> pd.DataFrame:
    """Every run's metrics under ``root`` in one tidy DataFrame, config columns joined.

    Columns: ``run_id, step, split, metric, value`` followed by the run's
    status (as :func:`observed` sees it) and config fields. Runs whose files
    cannot be read are skipped with a warning and listed in
    ``df.attrs["unreadable"]`` (run id -> reason).
    """
    frames, unreadable = [], {}
    for path in run_dirs(root):
        try:
            record = _flat_record(observed(json.loads((path / CONFIG_FILE).read_text()), path))
            metrics = RunDir(path.parent, path.name).read_metrics()
        except Exception as exc:  # any unreadable file is reported, not fatal
            unreadable[path.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"skipping unreadable run {path}: {unreadable[path.name]}", stacklevel=2)
            continue
        metrics.insert(0, "run_id", record["run_id"])
        for key, value in record.items():
            if key != "run_id":
                metrics[key] = [value] * len(metrics)
        frames.append(metrics)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", *METRIC_COLUMNS])
    df.attrs["unreadable"] = unreadable
    return df


# ---------------------------------------------------------------------------- study folders

STUDIES_DIR = "studies"
STUDY_FILE = "study.json"
NOTEBOOK_FILE = "depth_study.ipynb"  # the executed notebook of records that name no source notebook
STUDY_INTERRUPTED_ERROR = "its sweep stopped before it finished (nothing holds the study's lock)"
RECORD_COLUMNS = ("study_id", "status", "error", "depth", "variants")
TRAILING_COLUMNS = ("notebook", "run_ids", "start_time", "end_time", "worker")


def study_folder(runs_dir: str | Path, identifier: str) -> Path:
    """``<runs_dir>/studies/<study_id>``."""
    return Path(runs_dir) / STUDIES_DIR / identifier


def read_study(folder: str | Path) -> dict[str, Any] | None:
    """The study record in ``folder``, or None when missing or unreadable (not a JSON object)."""
    try:
        record = json.loads((Path(folder) / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def executed_notebook(folder: str | Path, record: Mapping[str, Any] | None) -> Path:
    """Where a study folder keeps its executed notebook: the source notebook's name."""
    source = (record or {}).get("source_notebook")
    return Path(folder) / (Path(source).name if source else NOTEBOOK_FILE)


def is_complete(folder: str | Path) -> bool:
    """True when the record says complete and the executed notebook is there."""
    record = read_study(folder)
    return bool(record) and record.get("status") == "complete" and executed_notebook(folder, record).exists()


def notebook_error(path: Path) -> str | None:
    """``ename: evalue`` of the first error output in an executed notebook file."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    return first_error(cells)


def first_error(cells: Iterable[Mapping[str, Any]]) -> str | None:
    """``ename: evalue`` of the first error output among notebook ``cells``, or None."""
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
    return None


def study_row(record: Mapping[str, Any] | None, folder: Path) -> dict[str, Any]:
    """One flat row: bookkeeping, then the parameters, then the notebook path and run ids.

    A study record stores ``pending``, ``running``, ``complete``, ``failed`` or
    ``cancelled``; a ``running`` one whose folder nobody holds reads as ``interrupted``.
    """
    if record is None:
        return {**dict.fromkeys((*RECORD_COLUMNS, *TRAILING_COLUMNS)), "study_id": folder.name,
                "status": "unreadable", "error": f"no readable {STUDY_FILE} in {folder}", "run_ids": []}
    record = observed(record, folder, STUDY_INTERRUPTED_ERROR)
    parameters = dict(record.get("parameters") or {})
    notebook = executed_notebook(folder, record)
    return {
        "study_id": record.get("study_id", folder.name),
        "kind": record.get("kind", "depth"),
        "status": record.get("status"),
        "error": record.get("error"),
        "depth": parameters.pop("depth", None),
        "variants": parameters.pop("variants", None),
        **{key: tuple(value) if isinstance(value, list) else value for key, value in parameters.items()},
        "notebook": str(notebook) if notebook.exists() else None,
        "run_ids": list(record.get("run_ids") or []),
        "start_time": record.get("start_time"),
        "end_time": record.get("end_time"),
        "worker": record.get("worker"),
    }


def list_studies(runs_dir: str | Path) -> pd.DataFrame:
    """One row per study under ``<runs_dir>/studies``: status, error, parameters, notebook path, run ids.

    Unreadable records give rows with status ``unreadable`` and the reason in ``error``.
    """
    root = Path(runs_dir) / STUDIES_DIR
    folders = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    rows = [study_row(read_study(folder), folder) for folder in folders]
    return pd.DataFrame(rows, columns=None if rows else [*RECORD_COLUMNS, *TRAILING_COLUMNS])
