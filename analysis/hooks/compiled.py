"""The Monitor under `torch.compile`: records that trace without graph breaks, and compiled code
that predates a monitor.

Inside code that Dynamo traces, a forward hook cannot keep Python state per call:
dict updates keyed by tensors, weak references, `.item()` and registering
autograd-node hooks are each a graph break or a recompilation. There the monitor
writes each module's raw statistics into preallocated tensors instead, at a row
fixed per module (its *slot*); in-place tensor writes trace into the graph, and
inductor fuses the reductions with the layer that produced the output. Output
gradients are taken with `Tensor.register_hook`, which Dynamo supports on
intermediate tensors. A recorded and an unrecorded step are two graphs, guarded on
one boolean, each compiled once and reused.

Differences from eager recording, both documented in the README: a module called
several times in one step keeps its last call (its row's `call` is the number of
calls - 1), and a 3-D output of a module without a known layout is read as
(batch, sequence, features).
"""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from analysis.hooks import statistics
from analysis.hooks.statistics import Row

# Leading columns of each buffer, before the kind's raw vector.
_ACTIVATION_META = 4  # calls, order, numel, channels
_GRAD_META = 2  # calls, numel
_BLOCK_META = 2  # calls, order


class TracedRecords:
    """Per-slot buffers that traced hooks write a recorded step's raw statistics into.

    Rows whose `calls` column is 0 were not written this step. Buffers are float64 on
    `device` (the model's); `clear` zeroes them after each recorded step.
    """

    def __init__(self, sites: Sequence[Any], blocks: Sequence[Any], device: torch.device) -> None:
        kinds = statistics.KINDS
        self.sites, self.blocks = list(sites), list(blocks)
        options = {"dtype": torch.float64, "device": device}
        self.activation = torch.zeros(len(sites), _ACTIVATION_META + kinds["activation"].raw_width, **options)
        self.grad = torch.zeros(len(sites), _GRAD_META + kinds["activation_grad"].raw_width, **options)
        self.block = torch.zeros(len(blocks), _BLOCK_META + kinds["block"].raw_width, **options)
        self.counter = torch.zeros((), **options)
        self.halves: dict[Any, tuple[str, int, Tensor, Tensor]] = {}

    def tensors(self) -> list[Tensor]:
        return [self.activation, self.grad, self.block]

    def write_activation(self, slot: int, raw: Tensor | None, numel: int, channels: int) -> None:
        """A module output seen in traced code: its calls, position in the forward pass and raw statistics."""
        row = self.activation[slot]
        row[0].add_(1)
        row[1].copy_(self.counter)
        row[2].fill_(numel)
        row[3].fill_(channels)
        if raw is not None:
            row[_ACTIVATION_META:].copy_(raw)
        self.counter.add_(1)

    def write_grad(self, slot: int, numel: int, raw: Tensor) -> None:
        """The gradient w.r.t. a module output; of several calls, the last (whose gradient arrives first)."""
        row = self.grad[slot]
        row[_GRAD_META:].copy_(torch.where(row[0] == 0, raw.to(row.dtype), row[_GRAD_META:]))
        row[0].add_(1)
        row[1].fill_(numel)

    def write_block(self, slot: int, raw: Tensor) -> None:
        row = self.block[slot]
        row[0].add_(1)
        row[1].copy_(self.counter)
        row[_BLOCK_META:].copy_(raw)
        self.counter.add_(1)

    def read(self, arrays: list[np.ndarray], order: dict[Any, int]) -> list[tuple[str, list[Row], np.ndarray]]:
        """(kind, rows, raw) of every written slot, from the host copies of `tensors()`; each module's
        position goes into `order` after those recorded eagerly, in the traced forward order. Buffers
        that were written are zeroed for the next recorded step."""
        self.halves.clear()  # a block whose outputs never paired up
        activation, grad, block = arrays
        written, grads, blocks = (np.flatnonzero(array[:, 0]) for array in arrays)
        if not (len(written) or len(grads) or len(blocks)):
            return []
        positions = sorted([(activation[i, 1], self.sites[i]) for i in written]
                           + [(block[i, 1], self.blocks[i]) for i in blocks], key=lambda item: item[0])
        for _, site in positions:
            order.setdefault(site, len(order))
        found = [
            ("activation", [Row(self.sites[i], int(activation[i, 0]) - 1, None, int(activation[i, 2]),
                                int(activation[i, 3])) for i in written], activation[written, _ACTIVATION_META:]),
            ("activation_grad", [Row(self.sites[i], int(grad[i, 0]) - 1, None, int(grad[i, 1])) for i in grads],
             grad[grads, _GRAD_META:]),
            ("block", [Row(self.blocks[i], int(block[i, 0]) - 1, None) for i in blocks], block[blocks, _BLOCK_META:]),
        ]
        self.clear()
        return [(kind, rows, raw) for kind, rows, raw in found if rows]

    def clear(self) -> None:
        for tensor in self.tensors():
            tensor.zero_()
        self.counter.zero_()


def _dynamo():
    """torch._dynamo where it is imported already (torch.compile imports it), else None: then nothing
    has been compiled in this process, and importing it (about a second) is not worth it."""
    return sys.modules.get("torch._dynamo")


def _compiled_code_exists(dynamo) -> bool:
    """Whether Dynamo holds compiled code in this process (True where its bookkeeping is unknown)."""
    output_codes = getattr(getattr(dynamo, "convert_frame", None), "output_codes", None)
    return bool(getattr(output_codes, "seen_ids", True))


def compiled_parts(model: nn.Module) -> list[str]:
    """Names of the modules of `model` whose code may have been compiled: modules that `torch.compile` or
    `Module.compile()` has wrapped, and modules of a class of which some wrapped instance exists (compiled
    code is shared between instances of a class)."""
    names = {id(m): name or "the model" for name, m in model.named_modules()}
    found = {names[id(m)] for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    wrapper = torch._dynamo.eval_frame.OptimizedModule
    wrapped = [o._orig_mod for o in gc.get_objects() if issubclass(type(o), wrapper)]  # type(): weak proxies raise
    wrapped_ids, classes = {id(m) for m in wrapped}, {type(m) for m in wrapped}
    found |= {names[id(m)] for m in model.modules() if id(m) in wrapped_ids or type(m) in classes}
    return sorted(found, key=lambda name: (name != "the model", name))


class HookGuards:
    """While any monitor is attached, Dynamo guards on module hooks (`skip_nnmodule_hook_guards = False`):
    code compiled for a module without the monitor's hooks, such as another instance of its class, is not
    reused for one with them. Code compiled before the first monitor was attached had no such guards;
    `attach` drops it (with a warning) where it may run a monitored module."""

    _holders = 0
    _saved = True

    @classmethod
    def attach(cls, model: nn.Module) -> bool:
        """Take a hold; True where one was taken (and `release` must follow)."""
        dynamo = _dynamo()
        if dynamo is None:
            return False
        if cls._holders == 0:
            cls._saved = dynamo.config.skip_nnmodule_hook_guards
            dynamo.config.skip_nnmodule_hook_guards = False
        cls._holders += 1
        if _compiled_code_exists(dynamo):
            parts = compiled_parts(model)
            if parts:
                warnings.warn(
                    f"Monitor: compiled code may exist for {', '.join(parts)} from before the monitor was "
                    "attached, and that code would not call the monitor's hooks; torch._dynamo.reset() dropped "
                    "all compiled code of this process so that it recompiles with them on its next call. Attach "
                    "the monitor before the first compiled call to avoid the recompilation.",
                    RuntimeWarning, stacklevel=4)
                dynamo.reset()
        return True

    @classmethod
    def release(cls) -> None:
        cls._holders -= 1
        if cls._holders == 0:
            _dynamo().config.skip_nnmodule_hook_guards = cls._saved
