"""Hooks that record why a network trains or fails to: per-layer statistics of any nn.Module.

    from analysis.hooks import Monitor, read_stats
    with Monitor(model, optimizer=opt, every=10, path="stats.parquet") as monitor:
        ...  # training loop; the monitor advances on each optimizer.step()
    frame = monitor.frame()

Under torch.distributed each rank's monitor writes its own parts into the same path
(rows carry a `rank` column); `read_stats(path)` reads them all.
"""

from __future__ import annotations

from analysis.hooks.monitor import DEFAULT_EVERY, DEFAULT_FLUSH_SECONDS, Monitor, log_steps
from analysis.hooks.selection import DEFAULT_TYPES, Selection, is_block, select
from analysis.hooks.statistics import STATS
from analysis.hooks.writer import COLUMNS, read_stats

__all__ = ["COLUMNS", "DEFAULT_EVERY", "DEFAULT_FLUSH_SECONDS", "DEFAULT_TYPES", "Monitor", "STATS", "Selection",
           "is_block", "log_steps", "read_stats", "select"]
