"""Tidy statistic rows in memory and as a directory of Parquet part files.

Each part is written to a hidden temporary file in the directory and moved into
place with `os.replace`, so a reader (or a killed run) only ever sees complete
parts; `pandas.read_parquet(path)` and pyarrow datasets skip the hidden files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("step", "module", "module_type", "index", "call", "kind", "stat", "value", "param")
SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("module", pa.string()),
    ("module_type", pa.string()),
    ("index", pa.int64()),
    ("call", pa.int64()),
    ("kind", pa.string()),
    ("stat", pa.string()),
    ("value", pa.float64()),
    ("param", pa.string()),
])
PART_GLOB = "part-*.parquet"


class Rows:
    """Column lists of pending rows."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in COLUMNS}

    def __len__(self) -> int:
        return len(self.columns["value"])

    def extend(self, **columns: list) -> None:
        for name, values in columns.items():
            self.columns[name].extend(values)

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=SCHEMA)

    def clear(self) -> None:
        for values in self.columns.values():
            values.clear()


class PartWriter:
    """Writes tables as numbered part files of one directory, each atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"path: {str(self.path)!r} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._prefix = f"part-{time.time_ns():020d}-"
        self._count = 0

    def write(self, table: pa.Table) -> Path:
        name = f"{self._prefix}{self._count:06d}.parquet"
        target, temp = self.path / name, self.path / f".{name}.tmp"
        try:
            pq.write_table(table, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        self._count += 1
        return target


def to_frame(table: pa.Table) -> pd.DataFrame:
    """DataFrame with the tidy columns; `param` holds str or None."""
    frame = table.to_pandas()
    param = frame["param"].astype(object)
    frame["param"] = param.where(param.notna(), None)
    return frame


def read_tables(path: str | os.PathLike) -> list[pa.Table]:
    """The complete part files under `path`, oldest first."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"path: no statistics directory at {str(path)!r}")
    return [pq.read_table(part, schema=SCHEMA) for part in sorted(path.glob(PART_GLOB))]


def read_stats(path: str | os.PathLike) -> pd.DataFrame:
    """Load every complete part written to `path` by a Monitor as one tidy DataFrame."""
    tables = read_tables(path)
    return to_frame(pa.concat_tables(tables) if tables else SCHEMA.empty_table())
