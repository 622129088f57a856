"""Monitor: per-layer activation, gradient, weight and update statistics of any nn.Module.

Forward hooks on the selected modules compute activation statistics and hook
the gradient of each output on the autograd node that produced it (unlike
`register_full_backward_hook`, that works with in-place activations and `x += y`).
Parameter statistics are read once per step, after gradient accumulation, with
foreach kernels. Every statistic stays on the tensor's device as a small raw
tensor until the step ends; then all of them reach the host in one transfer.

Under `torch.distributed` each process monitors its own replica: rows carry the
process's rank, parameter statistics are read after DistributedDataParallel has
averaged the gradients (so they agree across ranks), activations describe each
rank's own share of the batch.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
import weakref
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from analysis.hooks import statistics
from analysis.hooks.compiled import HookGuards, TracedRecords
from analysis.hooks.statistics import Row
from analysis.hooks.selection import Patterns, channel_layout, select
from analysis.hooks.writer import SCHEMA, PartWriter, Rows, read_tables, to_frame

DEFAULT_FLUSH_SECONDS = 5.0
"""With a path, pending rows are written at least this often (checked after each recorded step),
so a killed run loses at most the last few seconds of statistics."""

DEFAULT_EVERY = 25
"""Default cadence: with the full statistic set a recorded step costs about 1.35-1.42 uninstrumented
steps on a 2-core CPU, so one in 25 adds 1-2% to a run (benchmarks/overhead.md)."""

NEEDS_OPTIMIZER = ("update", "global.lr")


def log_steps(total: int, n: int) -> list[int]:
    """About `n` log-spaced steps in [0, total): 0, and total - 1 when n >= 2.

    For `every=`: dense early, when training changes fastest, sparse later.
    Returns range(total) when n >= total.
    """
    for name, value in (("total", total), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    if n >= total:
        return list(range(total))
    steps = [0]
    for k in range(1, n):
        target = math.floor(total ** (k / (n - 1))) - 1
        steps.append(max(steps[-1] + 1, min(target, total - 1 - (n - 1 - k))))
    return steps


def _cadence(every: int | Iterable[int]) -> int | frozenset[int]:
    if isinstance(every, Integral) and not isinstance(every, bool):
        if every < 1:
            raise ValueError(f"every must be an int >= 1 or a collection of steps; got {every}")
        return int(every)
    if not isinstance(every, Iterable) or isinstance(every, str):
        raise ValueError(f"every must be an int >= 1 or a collection of steps (ints >= 0); got {every!r}")
    steps = frozenset(every)
    if not steps or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in steps):
        raise ValueError(f"every: a collection of steps must hold ints >= 0 and not be empty; got {every!r}")
    return frozenset(int(s) for s in steps)


def _rank() -> int:
    """This process's rank in the default `torch.distributed` group, 0 outside one."""
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


def _wanted_stats(stats: str | Iterable[str] | None, has_optimizer: bool) -> dict[str, tuple[int, ...]]:
    """Map kind -> indices of the wanted statistics of that kind."""
    known = [f"{kind}.{stat}" for kind, names in statistics.STATS.items() for stat in names]
    if stats is None:
        names = [n for n in known if has_optimizer or not n.startswith(NEEDS_OPTIMIZER)]
    else:
        names = []
        for name in [stats] if isinstance(stats, str) else list(stats):
            if name in statistics.STATS:
                names += [n for n in known if n.startswith(name + ".")]
            elif name in known:
                names.append(name)
            else:
                raise ValueError(
                    f"stats: unknown statistic {name!r}; known: {', '.join(statistics.STATS)} "
                    f"(whole groups) or {', '.join(known)}"
                )
        if not names:
            raise ValueError("stats: name at least one statistic, or pass None for all")
        if not has_optimizer and any(n.startswith(NEEDS_OPTIMIZER) for n in names):
            raise ValueError(f"stats: {' and '.join(NEEDS_OPTIMIZER)} need optimizer=")
    wanted: dict[str, list[int]] = {}
    for name in names:
        kind, stat = name.split(".")
        index = statistics.STATS[kind].index(stat)
        if index not in wanted.setdefault(kind, []):
            wanted[kind].append(index)
    return {kind: tuple(sorted(indices)) for kind, indices in wanted.items()}


@dataclass(eq=False)
class _Site:
    """A module as rows name it; hashable by identity, used as a per-step key."""

    name: str
    type_name: str
    layout: int = 0
    block: _Site | None = None
    role: str | None = None
    slot: int = -1  # row in the traced records: hooked modules and blocks each numbered from 0


@dataclass(eq=False)
class _Param:
    param: nn.Parameter
    name: str
    site: _Site | None  # None: not selected, counted in the global gradient norm only


class _Batch:
    """Rows of one kind waiting for the step's single transfer to the host.

    `raws` holds 1-D raw vectors (one row each) or 2-D (rows, width) blocks; `rows`
    holds a `Row` per row, in the same order.
    """

    __slots__ = ("raws", "rows")

    def __init__(self) -> None:
        self.raws: list[Tensor] = []
        self.rows: list[Row] = []


class _StepState:
    """Everything a recorded step holds until it is finalised."""

    def __init__(self, recording: bool) -> None:
        self.recording = recording
        self.order: dict[_Site, int] = {}
        self.calls: dict[_Site, int] = {}
        self.batches: dict[str, _Batch] = {name: _Batch() for name, kind in statistics.KINDS.items()
                                           if kind.raw_width}
        self.activation = self.batches["activation"]
        self.outputs: dict[int, tuple[weakref.ref, int, int, Tensor]] = {}
        self.grad_targets: dict[int, tuple[weakref.ref, int, list[Row]]] = {}
        self.tensor_handles: list[RemovableHandle] = []
        self.halves: dict[_Site, tuple[str, int, Tensor, Tensor]] = {}  # role, call, output, sum of squares
        self.last_3d: tuple[torch.Size, int] | None = None
        self.before: list[tuple[list[_Param], list[Tensor]]] = []
        self.lrs: list[Any] = []
        self.scratch = statistics.Scratch()

    def release(self) -> None:
        """Drop tensor hooks and every tensor reference."""
        for handle in self.tensor_handles:
            handle.remove()
        self.tensor_handles.clear()
        self.outputs.clear()
        self.grad_targets.clear()
        self.halves.clear()
        self.before.clear()
        self.scratch.clear()


def _first_tensor(output: Any) -> Tensor | None:
    """The output itself, or the first tensor of a tuple, list or dict; None unless a
    non-empty dense floating-point tensor."""
    if not isinstance(output, Tensor):
        if isinstance(output, Mapping):
            output = tuple(output.values())
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, Tensor)), None)
    if (isinstance(output, Tensor) and output.is_floating_point() and output.layout == torch.strided
            and not output.is_nested and output.numel() and not output.is_meta):
        return output
    return None


def _pair(halves: dict[_Site, tuple[str, int, Tensor, Tensor]], site: _Site, call: int, out: Tensor,
          sumsq: Tensor) -> tuple[int, Tensor] | None:
    """Hold the first of a block's branch/shortcut outputs in `halves` until the other arrives; then
    (the branch's call, the block's raw statistics). None while waiting, or for outputs of different shapes."""
    block = site.block
    first = halves.pop(block, None)
    if first is None or first[0] == site.role:
        halves[block] = (site.role, call, out, sumsq)
        return None
    role, first_call, first_out, first_sumsq = first
    if first_out.shape != out.shape:
        return None
    if role == "branch":
        return first_call, statistics.block(first_out, out, first_sumsq, sumsq)
    return call, statistics.block(out, first_out, sumsq, first_sumsq)


def _device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer; the CPU for a model without either or on the
    meta device."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device if not tensor.is_meta else torch.device("cpu")
    return torch.device("cpu")


def _grouped(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of `tensors` grouped by (device, dtype), for foreach kernels."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def _joined(raws: list[Tensor]) -> Tensor:
    """One tensor of a kind's raw vectors; a model spread over several devices pays a
    copy to the host per vector here instead of one transfer per device."""
    device = raws[0].device
    if all(raw.device == device for raw in raws):
        return torch.cat(raws)
    return torch.cat([raw.cpu() for raw in raws])


def _to_host(tensors: list[Tensor]) -> list[np.ndarray]:
    """One device-to-host transfer per device for all `tensors`, as float64 arrays of their shapes."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(tensors)
    for indices in by_device.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices]).cpu().numpy().astype(np.float64)
        start = 0
        for i in indices:
            size = tensors[i].numel()
            out[i] = flat[start:start + size].reshape(tensors[i].shape)
            start += size
    return out


class Monitor:
    """Records per-layer statistics of `model` while used as a context manager.

    Args:
        model: any nn.Module. A `torch.compile` wrapper and a DistributedDataParallel
            wrapper (in that order) are looked through: the module inside is monitored
            and named as it would be unwrapped (no `_orig_mod.` or `module.` prefix), so
            compiled, distributed and single-process frames line up.
        optimizer: when given, the monitor advances on each `optimizer.step()` (step
            hooks), reads gradients just before it and records the update it made.
            Without it, call `monitor.step()` once per training step, after backward.
        every: record every `every`-th step (first_step, first_step + every, ...), or
            only the steps in a collection such as `log_steps(total, n)`.
        include: module types and/or fnmatch patterns on qualified names that replace
            the default selection; `exclude` removes matches. See `selection`.
        path: directory for Parquet part files; pending rows are written as a part
            every `flush_rows` rows (memory stays bounded), after a recorded step once
            `flush_seconds` have passed since the last write (a killed run keeps its
            statistics up to then), on `flush()` and on exit. Without it rows stay in
            memory. Each rank of a distributed run writes its own parts into `path`.
        stats: statistic groups ("activation") or single statistics ("activation.rms")
            to record; None records all (update and lr need the optimizer).
        first_step: number of the first step (0 by default; a training loop that counts
            optimizer steps from 1 passes 1 so both numberings agree).
        one_pass: read each big module output once, in a kernel that `torch.compile` compiles at the
            first recorded step, where min/max or zero counts are asked for (`analysis.hooks.one_pass`);
            False keeps to one stock operation per reduction.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        every: int | Collection[int] = DEFAULT_EVERY,
        include: Patterns = None,
        exclude: Patterns = None,
        path: str | os.PathLike | None = None,
        stats: str | Iterable[str] | None = None,
        flush_rows: int = 100_000,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        first_step: int = 0,
        one_pass: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1:
            raise ValueError(f"flush_rows must be an int >= 1; got {flush_rows!r}")
        if (isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float))
                or math.isnan(flush_seconds) or flush_seconds <= 0):
            raise ValueError(f"flush_seconds must be a number of seconds > 0 (math.inf: only by rows); "
                             f"got {flush_seconds!r}")
        if type(model).__name__ == "OptimizedModule":  # torch.compile(model): name layers as unwrapped
            model = model._orig_mod
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.model = model
        self.optimizer = optimizer
        self.every = _cadence(every)
        self.wanted = _wanted_stats(stats, optimizer is not None)
        self.selection = select(model, include, exclude)
        self.path = Path(path) if path is not None else None
        self.flush_rows = flush_rows
        self.flush_seconds = float(flush_seconds)
        self.rank = _rank()
        if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
            raise ValueError(f"first_step must be an int >= 0; got {first_step!r}")
        self.first_step = first_step
        self.current_step = first_step
        if not isinstance(one_pass, bool):
            raise ValueError(f"one_pass must be True or False; got {one_pass!r}")
        self.one_pass = one_pass
        self._writer = PartWriter(self.path, self.rank) if self.path is not None else None
        self._flushed_at = time.monotonic()
        self._paused = 0
        self._rows = Rows(self.rank)
        self._tables: list[pa.Table] = []
        self._handles: list[RemovableHandle] = []
        self._state = _StepState(recording=False)
        self._sites = self._make_sites()
        self._params = self._make_params()
        self._parts = {kind: statistics.KINDS[kind].parts(statistics.STATS[kind][i] for i in indices)
                       for kind, indices in self.wanted.items()}
        if 0 in self.wanted.get("global", ()):  # the global gradient norm comes from the parameters' norms
            self._parts["param_grad"] = self._parts.get("param_grad", frozenset()) | {"norm"}
        self._want_activation = "activation" in self.wanted
        self._want_grad = "activation_grad" in self.wanted
        self._want_block = "block" in self.wanted
        self._activation_parts = self._parts.get("activation", frozenset())
        self._grad_parts = self._parts.get("activation_grad", frozenset())
        self._active = False  # recording and not paused: the one check a hook makes
        self._traced: TracedRecords | None = None
        self._guarding = False  # holds HookGuards

    # -- setup -----------------------------------------------------------------

    def _make_sites(self) -> dict[int, _Site]:
        sites = {id(m): _Site(name, type(m).__name__, channel_layout(m), slot=slot)
                 for slot, (name, m) in enumerate(self.selection.modules)}
        for slot, (name, block) in enumerate(self.selection.blocks):
            site = _Site(name, type(block).__name__, slot=slot)
            sites[id(block.branch)].block, sites[id(block.branch)].role = site, "branch"
            sites[id(block.shortcut)].block, sites[id(block.shortcut)].role = site, "shortcut"
        for name, owner, _, _ in self.selection.params:
            sites.setdefault(id(owner), _Site(name, type(owner).__name__))
        return sites

    def _make_params(self) -> list[_Param]:
        selected = {id(p): (pname, self._sites[id(owner)]) for _, owner, pname, p in self.selection.params}
        params, seen = [], set()
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                pname, site = selected.get(id(p), ("", None))
                params.append(_Param(p, pname, site))
        return params

    def __enter__(self) -> Monitor:
        if self._handles:
            raise RuntimeError("this Monitor is already attached; use it in one `with` block at a time")
        try:
            self._guarding = HookGuards.attach(self.model)
            self._traced = TracedRecords([self._sites[id(m)] for _, m in self.selection.modules],
                                         [self._sites[id(b.branch)].block for _, b in self.selection.blocks],
                                         _device(self.model))
            for _, module in self.selection.modules:
                hook = partial(self._forward_hook, self._sites[id(module)])
                self._handles.append(module.register_forward_hook(hook))
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
                self._handles.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))
            self._state = _StepState(self.is_recorded(self.current_step))
            self._update_active()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook, drop the unfinished step and flush pending rows."""
        handles, self._handles = self._handles, []
        state, self._state = self._state, _StepState(recording=False)
        self._update_active()
        try:
            for handle in handles:
                handle.remove()
            if self._guarding:
                self._guarding = False
                HookGuards.release()
        finally:
            state.release()
            self.flush()

    # -- stepping --------------------------------------------------------------

    def is_recorded(self, step: int) -> bool:
        """Whether statistics are recorded at `step`."""
        if isinstance(self.every, int):
            return (step - self.first_step) % self.every == 0
        return step in self.every

    @property
    def recording(self) -> bool:
        """Whether the current step is recorded."""
        return self._state.recording

    def pause(self) -> None:
        """Record no forward pass until :meth:`resume` (say, an evaluation between two steps); pauses nest.

        Without it such a pass counts as part of the next step, as extra calls.
        """
        self._paused += 1
        self._update_active()

    def resume(self) -> None:
        """End the innermost :meth:`pause`."""
        if not self._paused:
            raise RuntimeError("resume() without a pause()")
        self._paused -= 1
        self._update_active()

    def _update_active(self) -> None:
        self._active = self._state.recording and not self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside this block are not recorded (:meth:`pause` to :meth:`resume`)."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def step(self) -> None:
        """End the current step (without an optimizer): read parameters, record, advance."""
        if self.optimizer is not None:
            raise RuntimeError("this Monitor advances on optimizer.step(); do not call monitor.step() too")
        if self._state.recording:
            self._read_params(self._state)
        self._advance()

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._state.recording:
            self._read_params(self._state)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._advance()

    def _advance(self) -> None:
        state = self._state
        try:
            if state.recording:
                self._finalize(state)
        finally:
            state.release()
            self.current_step += 1
            recording = self.is_recorded(self.current_step) and bool(self._handles)
            if recording or state.recording:
                self._state = _StepState(recording)
            self._update_active()

    # -- hooks -----------------------------------------------------------------

    def _forward_hook(self, site: _Site, module: nn.Module, args: Any, output: Any) -> None:
        if self._active:
            if torch.compiler.is_compiling():
                self._trace_output(site, output)
            else:
                self._record_output(self._state, site, output)

    def _record_output(self, state: _StepState, site: _Site, output: Any) -> None:
        out = _first_tensor(output)
        if out is None:
            return
        call = state.calls.get(site, 0)
        state.calls[site] = call + 1
        if site not in state.order:
            state.order[site] = len(state.order)
        ndim = out.dim()
        channel_dim = self._channel_dim(state, site, out) if ndim == 3 else int(ndim > 1)
        raw = None
        if self._want_activation:
            raw = self._activation(state, out, channel_dim)
            channels = out.shape[channel_dim] if ndim else 1
            state.activation.raws.append(raw)
            state.activation.rows.append(Row(site, call, None, out.numel(), channels))
        if self._want_block and site.block is not None:
            block = _pair(state.halves, site, call, out, self._sum_of_squares(out, raw))
            if block is not None:
                state.order.setdefault(site.block, len(state.order))
                state.batches["block"].raws.append(block[1])
                state.batches["block"].rows.append(Row(site.block, block[0], None))
        if self._want_grad and out.requires_grad and torch.is_grad_enabled():
            self._hook_grad(state, site, call, out)

    def _sum_of_squares(self, out: Tensor, raw: Tensor | None) -> Tensor:
        """From the activation statistics where they hold it, else a pass of its own."""
        return raw[1] if raw is not None and "sumsq" in self._activation_parts else statistics.sum_of_squares(out)

    def _trace_output(self, site: _Site, output: Any) -> None:
        """`_record_output` for code that Dynamo traces: tensor writes into the traced records only."""
        out = _first_tensor(output)
        if out is None:
            return
        traced = self._traced
        ndim = out.dim()
        channel_dim = (site.layout or -1) if ndim == 3 else int(ndim > 1)
        raw = None
        if self._want_activation:
            raw = statistics.activation(out, channel_dim, parts=self._activation_parts)
        traced.write_activation(site.slot, raw, out.numel(), out.shape[channel_dim] if ndim else 1)
        if self._want_block and site.block is not None:
            block = _pair(traced.halves, site, 0, out, self._sum_of_squares(out, raw))
            if block is not None:
                traced.write_block(site.block.slot, block[1])
        if self._want_grad and out.requires_grad and torch.is_grad_enabled():
            out.register_hook(partial(self._traced_grad_hook, site.slot, out.numel()))

    def _traced_grad_hook(self, slot: int, numel: int, grad: Tensor) -> None:
        self._traced.write_grad(slot, numel, statistics.activation_grad(grad, self._grad_parts))

    @staticmethod
    def _channel_dim(state: _StepState, site: _Site, out: Tensor) -> int:
        """For a 3-D output: the module's layout, else that of the previous 3-D output of
        the same shape (an activation after a Conv1d), else -1 (batch, sequence, features)."""
        dim = site.layout
        if not dim:
            last = state.last_3d
            dim = last[1] if last is not None and last[0] == out.shape else -1
        state.last_3d = (out.shape, dim)
        return dim

    def _activation(self, state: _StepState, out: Tensor, channel_dim: int) -> Tensor:
        """Raw activation reductions, computed once per tensor (and version) per step.

        Inference tensors carry no version counter, so they are never reused.
        """
        version = None if out.is_inference() else out._version
        cached = state.outputs.get(id(out))
        if (cached is not None and version is not None and cached[0]() is out and cached[1] == version
                and cached[2] == channel_dim):
            return cached[3]
        raw = statistics.activation(out, channel_dim, state.scratch, self._activation_parts, self.one_pass)
        if version is not None:
            state.outputs[id(out)] = (weakref.ref(out), version, channel_dim, raw)
        return raw

    def _hook_grad(self, state: _StepState, site: _Site, call: int, out: Tensor) -> None:
        """Hook the gradient w.r.t. `out` as the module returned it: a pre-hook on the autograd
        node that produced it (later in-place ops make new nodes), or a tensor hook on a leaf."""
        entry = state.grad_targets.get(id(out))
        if entry is not None and entry[0]() is out and entry[1] == out._version:
            entry[2].append(Row(site, call, None, out.numel()))
            return
        targets = [Row(site, call, None, out.numel())]
        state.grad_targets[id(out)] = (weakref.ref(out), out._version, targets)
        node = out.grad_fn
        if node is None:
            handle = out.register_hook(partial(self._grad_hook, state, targets))
        else:
            handle = node.register_prehook(partial(self._node_hook, state, targets, out.output_nr))
        state.tensor_handles.append(handle)

    def _node_hook(self, state: _StepState, targets: list[Row], index: int, grads: tuple) -> None:
        if grads[index] is not None:
            self._grad_hook(state, targets, grads[index])

    def _grad_hook(self, state: _StepState, targets: list[Row], grad: Tensor) -> None:
        if state is not self._state or not state.recording:
            return
        raw = statistics.activation_grad(grad, self._grad_parts)
        batch = state.batches["activation_grad"]
        for target in targets:
            batch.raws.append(raw)
            batch.rows.append(target)

    # -- parameters ------------------------------------------------------------

    def _read_params(self, state: _StepState) -> None:
        """Gradient, weight and (with an optimizer) pre-step snapshot of the parameters."""
        if "param_grad" in self._parts:
            with_grad = [p for p in self._params if p.param.grad is not None and p.param.grad.numel()
                         and p.param.grad.layout == torch.strided]
            grads = [p.param.grad for p in with_grad]
            for group in _grouped(grads):
                state.batches["param_grad"].raws.append(
                    statistics.param_grad([grads[i] for i in group], self._parts["param_grad"]))
                state.batches["param_grad"].rows.extend(
                    Row(with_grad[i].site, 0, with_grad[i].name, grads[i].numel()) for i in group)
        selected = [p for p in self._params if p.site is not None and p.param.numel()]
        if "weight" in self.wanted:
            tensors = [p.param for p in selected]
            for group in _grouped(tensors):
                state.batches["weight"].raws.append(statistics.weight([tensors[i] for i in group]))
                state.batches["weight"].rows.extend(Row(selected[i].site, 0, selected[i].name) for i in group)
        if self.optimizer is not None:
            if "update" in self.wanted:
                in_optimizer = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
                updated = [p for p in selected if id(p.param) in in_optimizer]
                for group in _grouped([p.param for p in updated]):
                    params = [updated[i] for i in group]
                    state.before.append((params, statistics.snapshot([p.param for p in params])))
            state.lrs = [group["lr"] for group in self.optimizer.param_groups]

    def _finish_update(self, state: _StepState) -> None:
        for params, before in state.before:
            state.batches["update"].raws.append(statistics.update(before, [p.param for p in params]))
            state.batches["update"].rows.extend(Row(p.site, 0, p.name) for p in params)
        state.before.clear()

    # -- finalisation ----------------------------------------------------------

    def _finalize(self, state: _StepState) -> None:
        """Move the step's raw statistics to the host in one transfer and emit rows."""
        self._finish_update(state)
        state.halves.clear()
        kinds = [kind for kind, batch in state.batches.items() if batch.raws]
        blocks = [_joined(state.batches[kind].raws).reshape(-1, statistics.KINDS[kind].raw_width)
                  for kind in kinds]
        traced = self._traced.tensors()
        host = _to_host(blocks + traced)
        pending = {kind: (state.batches[kind].rows, raw) for kind, raw in zip(kinds, host)}
        for kind, rows, raw in self._traced.read(host[len(blocks):], state.order):
            earlier_rows, earlier = pending.get(kind, ([], raw[:0]))
            pending[kind] = (earlier_rows + rows, np.concatenate([earlier, raw]))
        grad_norm = None
        for kind, (rows, raw) in pending.items():
            if kind == "param_grad":
                grad_norm = statistics.global_grad_norm(raw[:, 0])
            if kind in self.wanted:
                self._emit(state, kind, rows, raw)
        if "global" in self.wanted:
            self._emit_global(state, grad_norm)
        if len(self._rows) >= self.flush_rows or time.monotonic() - self._flushed_at >= self.flush_seconds:
            self.flush()

    def _emit(self, state: _StepState, kind: str, rows: list[Row], raw: np.ndarray) -> None:
        numel = np.array([row.numel for row in rows], dtype=np.float64)
        channels = np.array([row.channels for row in rows], dtype=np.float64)
        values = statistics.KINDS[kind].finish(raw, numel, channels)
        keep = [i for i, row in enumerate(rows) if row.site is not None]
        if len(keep) < len(rows):
            rows, values = [rows[i] for i in keep], values[keep]
        columns = self.wanted[kind]
        self._add_rows(state, kind, rows, values[:, columns], columns)

    def _emit_global(self, state: _StepState, grad_norm: float | None) -> None:
        names, values, params = [], [], []
        columns = self.wanted["global"]
        if 0 in columns and grad_norm is not None:
            names.append("grad_norm")
            values.append(grad_norm)
            params.append(None)
        if 1 in columns:
            for i, lr in enumerate(state.lrs):
                names.append("lr")
                values.append(float(lr))
                params.append(f"group{i}")
        n = len(values)
        if n:
            self._rows.extend(step=[self.current_step] * n, module=[""] * n, module_type=[""] * n,
                              index=[-1] * n, call=[0] * n, kind=["global"] * n, stat=names,
                              value=values, param=params)

    def _add_rows(self, state: _StepState, kind: str, rows: list[Row], values: np.ndarray,
                  columns: tuple[int, ...]) -> None:
        width = len(columns)
        n = len(rows) * width
        if not n:
            return
        order = state.order
        self._rows.extend(
            step=[self.current_step] * n,
            module=[row.site.name for row in rows for _ in range(width)],
            module_type=[row.site.type_name for row in rows for _ in range(width)],
            index=[order.get(row.site, -1) for row in rows for _ in range(width)],
            call=[row.call for row in rows for _ in range(width)],
            kind=[kind] * n,
            stat=[statistics.STATS[kind][c] for c in columns] * len(rows),
            value=values.reshape(-1).tolist(),
            param=[row.param for row in rows for _ in range(width)],
        )

    def flush(self) -> None:
        """Write the rows of finished steps now: a part file with a path, else an in-memory table.

        A step still being recorded is not included; its rows are written once it ends.
        """
        self._flushed_at = time.monotonic()
        if not len(self._rows):
            return
        table = self._rows.table()
        if self._writer is not None:
            self._writer.write(table)
        else:
            self._tables.append(table)
        self._rows.clear()

    # -- results ---------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """All recorded rows as a tidy long DataFrame (with a path: every part under it, of every rank,
        plus this monitor's pending rows)."""
        tables = read_tables(self.path) if self.path is not None else list(self._tables)
        if len(self._rows):
            tables.append(self._rows.table())
        return to_frame(pa.concat_tables(tables) if tables else SCHEMA.empty_table())
