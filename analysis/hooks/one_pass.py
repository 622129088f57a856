"""One-pass reductions of big tensors, compiled by `torch.compile` (C++ with OpenMP on the CPU, Triton on CUDA).

With stock ATen ops each raw statistic of a tensor is its own pass (a sum, a dot product,
a min/max, a comparison and its per-channel count). Here one kernel reads each element
once and writes six numbers per row of a 2-D view (`python -m analysis.bench reductions`
times both per tensor size: `benchmarks/one-pass.md`).

Used from eager code only (inside traced code the stock formulas are fused by the
model's own compiler), for tensors of at least `MIN_NUMEL` elements in rows of at least
`MIN_ROW`, below which the compiled call's fixed cost, or its per-row results, outweigh
the saved passes. It compiles once per device type and dtype (dynamic shapes: about
2-3 s, less with the inductor cache warm). Where it cannot compile (no C++ compiler, an
unsupported device), a warning says why, once per device type, and the caller's stock
ops serve.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

MIN_NUMEL = 1 << 19
"""Smallest tensor reduced in one compiled pass. Measured on a 2-core CPU over several runs (cold data, data
just written by a ReLU or a conv, outputs inside a ResNet-56 step), the one pass read 260 thousand elements
0.85-0.98x as fast as the stock passes, 520 thousand 0.82-1.53x (median 1.13), a million 0.91-1.55x
(median 1.28) and 3 million or more 1.6-5.5x: its fixed cost per call weighs on small tensors."""

MIN_ROW = 64
"""Shortest row: with shorter rows (a conv output smaller than 8x8) the per-row results cost more than the
saved passes (measured on cold data: 16-element rows 0.8-0.9x the stock passes' speed, 64-element rows
1.2-1.6x)."""

MAX_ROW = 1 << 24
"""Longest row: per-row counts are summed in float32, exact up to 2**24."""

ROWS = ("sum", "sumsq", "min", "max", "zeros", "nonfinite")
"""The reductions `rows` returns per row, in order."""


def _rows(v: Tensor, dtype: torch.dtype) -> Tensor:
    x = v.to(dtype)
    return torch.stack([x.sum(1), (x * x).sum(1), x.amin(1), x.amax(1),
                        (x == 0).sum(1, dtype=dtype), torch.isfinite(x).logical_not().sum(1, dtype=dtype)])


@functools.cache
def _compiled() -> Callable[[Tensor, torch.dtype], Tensor]:
    """`_rows` under `torch.compile`, made on first use (importing Dynamo takes a second or more)."""
    return torch.compile(_rows, dynamic=True)


_unavailable: set[str] = set()


def rows(v: Tensor, dtype: torch.dtype) -> Tensor | None:
    """Per row of the 2-D tensor `v`, in one pass and in `dtype`: a (6, rows) tensor of `ROWS`
    (#zeros counts x == 0, #nonfinite counts NaN and inf). None where compilation fails for v's device.

    Rows are `MIN_ROW` to `MAX_ROW` long; the caller checks.
    """
    device = v.device.type
    if device in _unavailable:
        return None
    try:
        with torch.no_grad():
            return _compiled()(v, dtype)
    except Exception as error:  # compilation failed: no compiler, an unsupported device or dtype
        _unavailable.add(device)
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"one-pass statistics are unavailable on {device} ({type(error).__name__}: {reason}); "
                      f"the monitor uses one stock operation per pass there",
                      RuntimeWarning, stacklevel=2)
        return None
