"""Monitor rows as TensorBoard scalars.

    from analysis.hooks.export import to_tensorboard
    to_tensorboard("runs/x/stats.parquet", "runs/x/tensorboard")  # then: tensorboard --logdir runs/x/tensorboard

Each row becomes one scalar at its step, under the tag
``kind/stat/module[.param][/callN]``: ``activation/rms/layer1.0.conv1``,
``param_grad/norm/fc.weight``, ``activation/rms/layer1.0.relu/call1`` (the
second call in the step), ``global/grad_norm``, ``global/lr/group0``.
TensorBoard groups the tags by kind. Rows of several ranks (torch.distributed)
go to one folder per rank, ``rank0``, ``rank1``, ..., which TensorBoard shows as
runs side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.extras import require
from analysis.hooks.writer import read_stats

NEEDED = ("step", "kind", "stat", "module", "param", "call", "value")
"""The columns a frame needs to be exported."""


def scalar_tag(kind: str, stat: str, module: str, param: Any = None, call: int = 0) -> str:
    """The TensorBoard tag of one statistic: kind/stat/module[.param][/callN]."""
    name = ".".join(part for part in (module, param) if isinstance(part, str) and part)
    return "/".join([kind, stat, *([name] if name else []), *([f"call{call}"] if call else [])])


def to_tensorboard(frame_or_path: pd.DataFrame | str | os.PathLike, log_dir: str | os.PathLike) -> int:
    """Write monitor rows (a frame, or a Monitor `path` to read) as TensorBoard scalars under `log_dir`.

    Scalars are written in step order with `torch.utils.tensorboard`, those of each rank
    under `log_dir/rank<N>` when the rows hold more than one; returns how many.
    """
    if isinstance(frame_or_path, (str, os.PathLike)):
        frame = read_stats(frame_or_path)
    elif isinstance(frame_or_path, pd.DataFrame):
        frame = frame_or_path
    else:
        raise ValueError(f"frame_or_path must be a DataFrame of monitor rows or a path; got "
                         f"{type(frame_or_path).__name__}")
    if not isinstance(log_dir, (str, os.PathLike)):
        raise ValueError(f"log_dir must be a str or a path; got {type(log_dir).__name__}")
    missing = [column for column in NEEDED if column not in frame.columns]
    if missing:
        raise ValueError(f"frame_or_path: the rows lack the column(s) {', '.join(missing)}; "
                         f"monitor rows have {', '.join(NEEDED)}")
    require("tensorboard", "integrations", feature="TensorBoard export")
    ranks = sorted(frame["rank"].unique()) if "rank" in frame.columns else []
    if len(ranks) > 1:
        return sum(_write(frame[frame["rank"] == rank], Path(log_dir) / f"rank{rank}") for rank in ranks)
    return _write(frame, Path(log_dir))


def _write(frame: pd.DataFrame, log_dir: Path) -> int:
    """Write the rows of `frame` as one TensorBoard run in `log_dir`; return how many."""
    from torch.utils.tensorboard import SummaryWriter

    tags = [scalar_tag(*row) for row in _rows(frame, ("kind", "stat", "module", "param", "call"))]
    ordered = pd.DataFrame({"step": frame["step"].to_numpy(), "tag": tags, "value": frame["value"].to_numpy()})
    ordered = ordered.sort_values(["step", "tag"], kind="stable")
    with SummaryWriter(os.fspath(log_dir)) as writer:
        for step, tag, value in _rows(ordered, ("step", "tag", "value")):
            writer.add_scalar(tag, float(value), int(step))
    return len(ordered)


def _rows(frame: pd.DataFrame, columns: tuple[str, ...]) -> Iterable[tuple]:
    return zip(*(frame[column].tolist() for column in columns))
