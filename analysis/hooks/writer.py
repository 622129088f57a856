"""Tidy statistic rows in memory and as a directory of Parquet part files.

Each part is written to a hidden temporary file in the directory, fsync'd, moved
into place with `os.replace` and the directory fsync'd, so a reader (or a killed
run, or a machine that loses power) only ever sees complete parts;
`pandas.read_parquet(path)` and pyarrow datasets skip the hidden files.

Every row names the `rank` of the process that recorded it (0 outside
`torch.distributed`). The processes of a distributed run write their own parts
into one directory: part names carry the rank, so they never collide, and
`read_stats` reads them all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.store import fsync_directory

COLUMNS = ("step", "module", "module_type", "index", "call", "kind", "stat", "value", "param", "rank")
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
    ("rank", pa.int64()),
])
PART_GLOB = "part-*.parquet"


class Rows:
    """Column lists of pending rows, all recorded by the process of one `rank`."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.columns: dict[str, list] = {name: [] for name in COLUMNS if name != "rank"}

    def __len__(self) -> int:
        return len(self.columns["value"])

    def extend(self, **columns: list) -> None:
        for name, values in columns.items():
            self.columns[name].extend(values)

    def table(self) -> pa.Table:
        return pa.table({**self.columns, "rank": [self.rank] * len(self)}, schema=SCHEMA)

    def clear(self) -> None:
        for values in self.columns.values():
            values.clear()


class PartWriter:
    """Writes tables as numbered part files of one directory, each atomically and durably.

    Names are `part-<creation time ns>-<rank>-<count>.parquet`: a writer's parts
    sort together, in the order written, and writers of different ranks (or
    runs) never share a name.
    """

    def __init__(self, path: str | os.PathLike, rank: int = 0) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"path: {str(self.path)!r} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._prefix = f"part-{time.time_ns():020d}-{rank:05d}-"
        self._count = 0

    def write(self, table: pa.Table) -> Path:
        name = f"{self._prefix}{self._count:06d}.parquet"
        target, temp = self.path / name, self.path / f".{name}.tmp"
        try:
            with open(temp, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        fsync_directory(self.path)
        self._count += 1
        return target


def to_frame(table: pa.Table) -> pd.DataFrame:
    """DataFrame with the tidy columns; `param` holds str or None; `rank` is 0 in parts written before it existed."""
    rank = table.schema.get_field_index("rank")
    table = table.set_column(rank, "rank", pc.fill_null(table["rank"], 0))
    frame = table.to_pandas()
    param = frame["param"].astype(object)
    frame["param"] = param.where(param.notna(), None)
    return frame


def read_tables(path: str | os.PathLike) -> list[pa.Table]:
    """The complete part files under `path`, by name (each writer's parts together, oldest first)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"path: no statistics directory at {str(path)!r}")
    return [pq.read_table(part, schema=SCHEMA) for part in sorted(path.glob(PART_GLOB))]


def read_stats(path: str | os.PathLike) -> pd.DataFrame:
    """Load every complete part written to `path` by Monitors (of every rank) as one tidy DataFrame."""
    tables = read_tables(path)
    return to_frame(pa.concat_tables(tables) if tables else SCHEMA.empty_table())
