"""Statistic groups: device-side reductions and their host-side completion.

Each group is a pair of small functions, in the spirit of Cockpit's quantities:

* a *reduce* function runs on the tensor's own device, in float32 (float64 for
  float64 tensors), and returns a short vector of raw reductions without ever
  synchronising with the host on CUDA;
* a *finish* function runs on the host, vectorised over all rows of a step in
  float64, and turns the raw reductions into the published statistics.

Work is in proportion to what is asked: each reduce function takes the *parts* of
its raw vector that the requested statistics need (`Kind.needs`) and skips every
other pass; an unrequested column of the raw vector holds 0. With `one_pass=True`, a
request that includes min/max or zero counting on a big contiguous output runs as one
compiled pass (`analysis.hooks.one_pass`). Otherwise, and where that cannot compile,
the passes over a tensor are stock operations: one sum, one sum of squares (a BLAS dot
product), one min/max and one count of zeros per channel (through a reused buffer). On the CPU
non-finite values are then only counted when the sum of squares is non-finite (a
free scalar check there); on other devices, and inside code that `torch.compile`
traces, they are counted every time, since a check would cost a host
synchronisation (or a graph break).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from analysis.hooks.one_pass import MAX_ROW, MIN_NUMEL, MIN_ROW, rows as one_pass_rows

ACTIVATION = ("mean", "std", "rms", "absmax", "zero_fraction", "dead_fraction", "nonfinite")
ACTIVATION_GRAD = ("rms", "absmax", "nonfinite")
PARAM_GRAD = ("norm", "rms", "absmax", "nonfinite")
WEIGHT = ("norm",)
UPDATE = ("ratio",)
GLOBAL = ("grad_norm", "lr")
BLOCK = ("shortcut_norm", "branch_norm", "ratio", "cosine")

Parts = frozenset[str]
"""Parts of a raw vector to compute: each names one pass (or one group of columns) of a reduction."""

ACTIVATION_PARTS = {"mean": ("sum",), "std": ("sum", "sumsq"), "rms": ("sumsq",), "absmax": ("minmax",),
                    "zero_fraction": ("zeros",), "dead_fraction": ("zeros",), "nonfinite": ("nonfinite",)}
ACTIVATION_GRAD_PARTS = {"rms": ("sumsq",), "absmax": ("minmax",), "nonfinite": ("nonfinite",)}
PARAM_GRAD_PARTS = {"norm": ("norm",), "rms": ("norm",), "absmax": ("absmax",), "nonfinite": ("nonfinite",)}
ALL_PARTS: Parts = frozenset(part for needs in (ACTIVATION_PARTS, ACTIVATION_GRAD_PARTS, PARAM_GRAD_PARTS)
                             for parts in needs.values() for part in parts)
"""Every part: what a reduce function computes when not told otherwise."""

# Per-channel nonzero counts are summed in float32 up to this many elements per channel (exact).
_EXACT_FLOAT32_COUNT = 2**24


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 and narrower floats, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_compute(x: Tensor) -> Tensor:
    x = x.detach()
    dtype = compute_dtype(x.dtype)
    return x if x.dtype == dtype else x.to(dtype)


def _fast_path(x: Tensor, probe: Tensor) -> bool:
    """On the CPU outside traced code, whether `probe` (a sum of squares of x) is finite: then
    x holds no NaN or inf."""
    return _probes(x) and math.isfinite(probe.item())


def _probes(x: Tensor) -> bool:
    """Whether non-finite values of x are looked for through a sum of squares (see `_fast_path`)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _nonfinite(x: Tensor) -> Tensor:
    return torch.isfinite(x).logical_not_().sum(dtype=x.dtype)


def sum_of_squares(x: Tensor) -> Tensor:
    """Sum of squares in the compute dtype: a BLAS dot product where x is contiguous
    (faster than vector_norm); in traced code, a plain reduction that the compiler fuses
    (and that does not branch on strides, which gradient hooks cannot)."""
    x = _as_compute(x)
    if torch.compiler.is_compiling():
        return x.square().sum()
    if x.is_contiguous():
        flat = x.view(-1)
        return torch.dot(flat, flat)
    return torch.linalg.vector_norm(x).square()


class Scratch:
    """A reusable buffer for elementwise intermediates, so reductions over big tensors
    allocate (and page-fault) nothing; dropped at the end of each recorded step."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def like(self, x: Tensor) -> Tensor:
        """A contiguous tensor of x's shape, dtype and device, with garbage contents."""
        key = (x.device, x.dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < x.numel():
            buffer = self._buffers[key] = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return buffer[: x.numel()].view(x.shape)

    def clear(self) -> None:
        self._buffers.clear()


# Passes over an output that each part of `activation` costs with stock operations.
_STOCK_PASSES = {"sum": 1, "sumsq": 1, "minmax": 1, "zeros": 2, "nonfinite": 1}
# Parts whose stock passes are bound by compute (about a third of a sum's speed on a just-written, cache-warm
# output): without one of them the stock sum and dot product are as fast as the one pass.
_SLOW_PARTS = frozenset({"minmax", "zeros"})


def _one_pass_rows(x: Tensor, parts: Parts) -> Tensor | None:
    """`one_pass.rows` of an output with channels on dim 1 viewed as (batch x channels, the rest); None where
    the stock passes serve: parts that cost one stock pass or none of `_SLOW_PARTS`, a small or non-contiguous
    tensor, short rows, traced code, or no compiler."""
    row = x.numel() // max(x.shape[0] * x.shape[1], 1)
    if (not parts & _SLOW_PARTS or sum(_STOCK_PASSES.get(part, 0) for part in parts) < 2
            or x.numel() < MIN_NUMEL or not x.is_contiguous() or not MIN_ROW <= row <= MAX_ROW
            or torch.compiler.is_compiling()):
        return None
    return one_pass_rows(x.view(-1, row), compute_dtype(x.dtype))


def activation(x: Tensor, channel_dim: int, scratch: Scratch | None = None,
               parts: Parts | None = None, one_pass: bool = False) -> Tensor:
    """Raw reductions of a module output: [sum, sum of squares, min, max, zeros, dead, nonfinite].

    `zeros` counts elements == 0, `dead` counts channels (slices along
    `channel_dim`) whose elements are all exactly zero over the whole batch.
    Only the columns of `parts` ("sum", "sumsq", "minmax", "zeros" for zeros and
    dead, "nonfinite") are computed; the others hold 0. With `one_pass`, an output of
    three or more dims with channels on dim 1 is read once (see `_one_pass_rows`); else
    the passes over x are: sum, sum of squares, min/max, and x == 0 written into
    `scratch` then summed per channel.
    """
    parts = ALL_PARTS if parts is None else parts
    if one_pass and x.dim() > 2 and channel_dim % x.dim() == 1:
        rows = _one_pass_rows(x.detach(), parts)
        if rows is not None:
            return _activation_from_rows(rows, x.shape[0], x.numel() // x.shape[1], parts)
    x = _as_compute(x)
    if x.dim() < 2:
        x, channel_dim = x.reshape(1, -1), 1
    zero = x.new_zeros(())
    total = x.sum() if "sum" in parts else zero
    probe = "nonfinite" in parts and _probes(x)
    sumsq = sum_of_squares(x) if "sumsq" in parts or probe else zero
    low, high = torch.aminmax(x) if "minmax" in parts else (zero, zero)
    zeros = dead = zero
    if "zeros" in parts:
        dims = tuple(d for d in range(x.dim()) if d != channel_dim % x.dim())
        per_channel = x.numel() // x.shape[channel_dim]
        flags = (x == 0).to(x.dtype) if scratch is None else torch.eq(x, 0, out=scratch.like(x))
        counts = flags.sum(dims) if per_channel <= _EXACT_FLOAT32_COUNT else flags.sum(dims, dtype=torch.float64)
        zeros, dead = counts.sum(dtype=x.dtype), (counts == per_channel).sum(dtype=x.dtype)
    nonfinite = zero
    if "nonfinite" in parts and not _fast_path(x, sumsq):
        nonfinite = _nonfinite(x)
    return torch.stack([total, sumsq, low, high, zeros, dead, nonfinite])


def _activation_from_rows(rows: Tensor, batch: int, per_channel: int, parts: Parts) -> Tensor:
    """`activation`'s raw vector from the per-row reductions of an output viewed as (batch x channels, rest),
    `per_channel` elements in each channel."""
    totals = rows.sum(1)
    zero = totals.new_zeros(())
    low = rows[2].amin() if "minmax" in parts else zero
    high = rows[3].amax() if "minmax" in parts else zero
    zeros = dead = zero
    if "zeros" in parts:
        counts = rows[4].view(batch, -1).sum(0, dtype=torch.float64)  # per channel
        zeros, dead = counts.sum().to(zero.dtype), (counts == per_channel).sum().to(zero.dtype)
    return torch.stack([totals[0] if "sum" in parts else zero, totals[1] if "sumsq" in parts else zero,
                        low, high, zeros, dead, totals[5] if "nonfinite" in parts else zero])


def finish_activation(raw: np.ndarray, numel: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """mean = sum/n; rms = sqrt(sum(x^2)/n); std = sqrt(rms^2 - mean^2) (population);
    absmax = max(-min, max); zero_fraction = #(x == 0)/n; dead_fraction = dead/channels."""
    total, sumsq, low, high, zeros, dead, nonfinite = raw.T
    mean = total / numel
    rms = np.sqrt(sumsq / numel)
    std = np.sqrt(np.maximum(rms * rms - mean * mean, 0.0))
    absmax = np.maximum(-low, high)
    return np.stack([mean, std, rms, absmax, zeros / numel, dead / channels, nonfinite], axis=1)


def activation_grad(g: Tensor, parts: Parts | None = None) -> Tensor:
    """Raw reductions of the gradient w.r.t. a module output: [sum of squares, min, max, nonfinite].

    Only the columns of `parts` ("sumsq", "minmax", "nonfinite") are computed; the others hold 0.
    Two stock passes at most (a gradient arrives cache-warm, where they cost about what one compiled
    pass does, without its fixed cost per call).
    """
    parts = ALL_PARTS if parts is None else parts
    g = _as_compute(g)
    zero = g.new_zeros(())
    probe = "nonfinite" in parts and _probes(g)
    sumsq = sum_of_squares(g) if "sumsq" in parts or probe else zero
    low, high = torch.aminmax(g) if "minmax" in parts else (zero, zero)
    nonfinite = zero
    if "nonfinite" in parts and not _fast_path(g, sumsq):
        nonfinite = _nonfinite(g)
    return torch.stack([sumsq, low, high, nonfinite])


def finish_activation_grad(raw: np.ndarray, numel: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """rms = sqrt(sum(g^2)/n); absmax = max(-min, max); nonfinite = #(not finite)."""
    sumsq, low, high, nonfinite = raw.T
    return np.stack([np.sqrt(sumsq / numel), np.maximum(-low, high), nonfinite], axis=1)


def _norms(tensors: list[Tensor], ord: float = 2.0) -> Tensor:
    dtype = compute_dtype(tensors[0].dtype)
    return torch.stack(torch._foreach_norm(tensors, ord, dtype=dtype)).to(dtype)


def _absmax(tensors: list[Tensor]) -> Tensor:
    """max |t| of each tensor, one min/max pass each and no temporary copies."""
    return torch.stack([torch.stack(torch.aminmax(t)) for t in tensors]).abs().amax(dim=1)


def param_grad(grads: list[Tensor], parts: Parts | None = None) -> Tensor:
    """Raw reductions of gradients of one device and dtype, a (P, 3) tensor: [norm, absmax, nonfinite].

    Only the columns of `parts` ("norm", "absmax", "nonfinite") are computed; the others hold 0.
    One foreach kernel for all norms, one min/max pass per gradient; non-finite entries
    are counted per gradient only where a norm is non-finite (CPU) or always (elsewhere).
    """
    parts = ALL_PARTS if parts is None else parts
    grads = [g.detach() for g in grads]
    probe = "nonfinite" in parts and _probes(grads[0])
    zeros = torch.zeros(len(grads), dtype=compute_dtype(grads[0].dtype), device=grads[0].device)
    norms = _norms(grads) if "norm" in parts or probe else zeros
    absmax = _absmax(grads).to(zeros.dtype) if "absmax" in parts else zeros
    nonfinite = zeros
    if "nonfinite" in parts and not _fast_path(norms, norms.sum()):
        nonfinite = torch.stack([_nonfinite(g) for g in grads]).to(zeros.dtype)
    return torch.stack([norms, absmax, nonfinite], dim=1)


def finish_param_grad(raw: np.ndarray, numel: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """norm = ||g||; rms = ||g||/sqrt(n); absmax = max|g|; nonfinite = #(not finite)."""
    norm, absmax, nonfinite = raw.T
    return np.stack([norm, norm / np.sqrt(numel), absmax, nonfinite], axis=1)


def weight(params: list[Tensor]) -> Tensor:
    """Raw reductions of parameters of one device and dtype, a (P, 1) tensor: [norm]."""
    return _norms([p.detach() for p in params]).unsqueeze(1)


def finish_weight(raw: np.ndarray, numel: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """norm = ||w||."""
    return raw


def snapshot(params: list[Tensor]) -> list[Tensor]:
    """Copies of `params` taken before an optimizer step (one foreach kernel)."""
    return torch._foreach_mul([p.detach() for p in params], 1.0)


def update(before: list[Tensor], after: list[Tensor]) -> Tensor:
    """Raw reductions of one optimizer step, a (P, 2) tensor: [||w_after - w_before||, ||w_before||].

    `before` is consumed: it is overwritten with the difference.
    """
    weight_norms = _norms(before)
    torch._foreach_sub_(before, [p.detach() for p in after])
    return torch.stack([_norms(before), weight_norms], dim=1)


def finish_update(raw: np.ndarray, numel: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """ratio = ||w_after - w_before|| / ||w_before||."""
    delta, norm = raw.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return (delta / norm)[:, None]


def block(branch: Tensor, shortcut: Tensor, branch_sumsq: Tensor, shortcut_sumsq: Tensor) -> Tensor:
    """Raw reductions of a residual block: [||shortcut||^2, ||branch||^2, <branch, shortcut>].

    Norms and the inner product run over the whole batch, flattened; the squared
    norms come from the outputs' activation statistics, so only the inner product
    is a new pass.
    """
    branch, shortcut = _as_compute(branch), _as_compute(shortcut)
    dot = torch.dot(branch.reshape(-1), shortcut.reshape(-1).to(branch.dtype))
    return torch.stack([shortcut_sumsq, branch_sumsq, dot.to(shortcut_sumsq.dtype)])


def finish_block(raw: np.ndarray, numel: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """norms = sqrt(squared norms); ratio = ||branch|| / ||shortcut||;
    cosine = <branch, shortcut> / (||branch|| ||shortcut||)."""
    shortcut_norm, branch_norm, dot = np.sqrt(raw[:, 0]), np.sqrt(raw[:, 1]), raw[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = branch_norm / shortcut_norm
        cosine = dot / (branch_norm * shortcut_norm)
    return np.stack([shortcut_norm, branch_norm, ratio, cosine], axis=1)


def global_grad_norm(param_grad_norms: np.ndarray) -> float:
    """grad_norm = sqrt(sum over all parameters with a gradient of ||g||^2)."""
    return float(np.sqrt(np.sum(np.square(param_grad_norms))))


# -- the registry ----------------------------------------------------------------

class Row(NamedTuple):
    """One row of a kind, waiting in a recorded step: where it was measured and what its finish needs.

    ``site`` is the monitor's record of the module (None for a parameter outside the
    selection, which counts towards the global gradient norm only); ``numel`` and
    ``channels`` are those of the measured tensor where the kind's finish uses them.
    """

    site: Any
    call: int
    param: str | None
    numel: int = 0
    channels: int = 0


Finish = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Kind:
    """A kind of statistic: the statistics it publishes (columns of ``finish``'s result), the width of the
    raw vector its device-side reduction returns per row, and ``finish(raw, numel, channels)``, which turns
    the step's raw vectors (rows x raw_width, float64) into values (rows x len(stats))."""

    stats: tuple[str, ...]
    raw_width: int
    finish: Finish | None
    needs: dict[str, tuple[str, ...]] | None = None  # statistic -> parts of the raw vector; None: all

    def parts(self, stats: Iterable[str]) -> Parts:
        """The parts of the raw vector that `stats` need (empty for a kind without parts)."""
        return frozenset(part for stat in stats for part in (self.needs or {}).get(stat, ()))


KINDS: dict[str, Kind] = {
    "activation": Kind(ACTIVATION, 7, finish_activation, ACTIVATION_PARTS),
    "activation_grad": Kind(ACTIVATION_GRAD, 4, finish_activation_grad, ACTIVATION_GRAD_PARTS),
    "param_grad": Kind(PARAM_GRAD, 3, finish_param_grad, PARAM_GRAD_PARTS),
    "weight": Kind(WEIGHT, 1, finish_weight),
    "update": Kind(UPDATE, 2, finish_update),
    "global": Kind(GLOBAL, 0, None),  # from param_grad's raw norms and the optimizer's learning rates
    "block": Kind(BLOCK, 3, finish_block),
}
"""Every kind the monitor records; a new statistic is its reduction, its finish and an entry here."""

STATS: dict[str, tuple[str, ...]] = {name: kind.stats for name, kind in KINDS.items()}
