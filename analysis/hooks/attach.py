"""What the trainer callbacks share: Monitor options checked up front, one Monitor per training run.

A trainer builds its optimizer only when training starts, so a callback holds the
`Monitor` options and attaches a Monitor then (`attach`), with the trainer's
torch optimizer, numbering steps from the trainer's global step; `detach` removes
every hook and keeps the rows. The callback is also a context manager that
detaches on leaving, for trainers that have no exception event.

A trainer may pass the forward and backward pass to `optimizer.step(closure)`
(Lightning does at 32-bit precision), where the optimizer runs it only after the
step hooks; the closure is then run first, so that the Monitor reads the step's
gradients and not the previous step's.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from analysis.hooks.monitor import DEFAULT_EVERY, Monitor
from analysis.hooks.selection import Patterns
from analysis.hooks.writer import read_stats


class AttachedMonitor:
    """A Monitor attached for the length of a training run, built from options given in advance.

    Args:
        every, include, exclude, stats, path: as for `Monitor`. `every` and `stats` are
            checked here; `include` and `exclude` when a model is attached.
    """

    def __init__(
        self,
        *,
        every: int | Collection[int] = DEFAULT_EVERY,
        include: Patterns = None,
        exclude: Patterns = None,
        stats: str | Iterable[str] | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path must be a str, a path or None; got {type(path).__name__}")
        probe = nn.Linear(1, 1)
        Monitor(probe, optimizer=torch.optim.SGD(probe.parameters(), lr=0.0), every=every, stats=stats)
        self.options: dict[str, Any] = {"every": every, "include": include, "exclude": exclude, "stats": stats,
                                        "path": path}
        self.monitor: Monitor | None = None
        """The attached Monitor while training runs, else None."""
        self._frames: list[pd.DataFrame] = []
        self._closure_hook: RemovableHandle | None = None
        self._pausing = False

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, first_step: int) -> Monitor:
        """Attach a Monitor to `model` that advances on `optimizer`'s steps, the first numbered `first_step`.

        A Monitor still attached from an earlier run (one that raised) is detached first.
        """
        self.detach()
        monitor = Monitor(model, optimizer=optimizer, first_step=first_step, **self.options)
        self._closure_hook = optimizer.register_step_pre_hook(_closure_first)  # before the Monitor's hooks
        try:
            self.monitor = monitor.__enter__()
        except BaseException:
            self.detach()
            raise
        return monitor

    def pause(self) -> None:
        """Record no forward pass until :meth:`resume` (an evaluation between training steps)."""
        if self.monitor is not None and not self._pausing:
            self.monitor.pause()
            self._pausing = True

    def resume(self) -> None:
        """Record forward passes again after :meth:`pause`."""
        if self._pausing:
            self.monitor.resume()
            self._pausing = False

    def detach(self) -> None:
        """Remove every hook of the attached Monitor (if any), drop its unfinished step and keep its rows."""
        self._pausing = False
        monitor, self.monitor = self.monitor, None
        closure_hook, self._closure_hook = self._closure_hook, None
        if closure_hook is not None:
            closure_hook.remove()
        if monitor is None:
            return
        monitor.close()
        if self.options["path"] is None:
            self._frames.append(monitor.frame())

    def frame(self) -> pd.DataFrame:
        """The rows recorded so far: every part under `path`, or those of each run of this callback."""
        if self.options["path"] is not None:
            return read_stats(self.options["path"])
        frames = self._frames + ([self.monitor.frame()] if self.monitor is not None else [])
        if not frames:
            raise RuntimeError("no training has run with this callback yet")
        return pd.concat(frames, ignore_index=True)

    def __enter__(self) -> AttachedMonitor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.detach()


def _closure_first(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Step pre-hook: run the step's closure now and hand the optimizer its result.

    The optimizer's first call of the closure returns that result; a later call (LBFGS
    evaluates again) runs the closure as usual.
    """
    closure: Callable[[], Any] | None = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0]: self
    if closure is None:
        return None
    with torch.enable_grad():
        result = closure()
    calls = 0

    def replay() -> Any:
        nonlocal calls
        calls += 1
        return result if calls == 1 else closure()

    if "closure" in kwargs:
        return args, {**kwargs, "closure": replay}
    return (args[0], replay, *args[2:]), kwargs
