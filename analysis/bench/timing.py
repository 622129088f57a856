"""Interleaved A/B timing of training steps: the one method every benchmark here uses.

Two identical copies of a model train in turn in one process, steps interleaved
A B B A A B ..., so load from other processes hits both alike. One copy carries the
tool under test, the other nothing; each pair gives the ratio of the instrumented
step over the uninstrumented step next to it. Then the copies swap roles; pooling
both runs cancels speed differences between the copies themselves (memory placement).
"""

from __future__ import annotations

import copy
import statistics as stats
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 64
IMAGE = 32

Instrument = Callable[[nn.Module, torch.optim.Optimizer], ContextManager]
"""Attaches a tool to (model, optimizer) for the duration of a `with` block."""


def batch(device: torch.device, seed: int = 0, size: int = BATCH, image: int = IMAGE,
          classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images and labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, image, image, generator=generator)
    y = torch.randint(0, classes, (size,), generator=generator)
    return x.to(device), y.to(device)


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum, the optimizer of every benchmark."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step: zero the gradients, cross-entropy, backward, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Wall time of `step` in ms, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (exclusive method; the value itself for n < 2)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = stats.quantiles(values, n=4)
    return q1, median, q3


@dataclass
class Comparison:
    """Per-pair step times of an uninstrumented (base) and an instrumented copy, per role."""

    base_ms: list[float] = field(default_factory=list)
    by_role: list[list[float]] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """Every per-pair ratio, both roles pooled."""
        return [ratio for role in self.by_role for ratio in role]

    @property
    def ratio(self) -> float:
        """Geometric mean over the roles of the median per-pair ratio."""
        return stats.geometric_mean([stats.median(role) for role in self.by_role])

    @property
    def base_median(self) -> float:
        return stats.median(self.base_ms)


def compare(models: tuple[nn.Module, nn.Module], instrument: Instrument, device: torch.device,
            steps: int, warmup: int = 2, step: Callable = train_step,
            inputs: tuple[torch.Tensor, torch.Tensor] | None = None, swap: bool = True) -> Comparison:
    """Interleaved steps of two identical model copies, each instrumented in turn by `instrument`
    (only the second copy with `swap=False`).

    `warmup` steps per role are run and dropped (a compiled model compiles then).
    """
    optimizers = [optimizer_for(m) for m in models]
    x, y = inputs if inputs is not None else batch(device)
    result = Comparison()
    for inst, base in ((1, 0), (0, 1))[:2 if swap else 1]:
        run_base = partial(timed, partial(step, models[base], optimizers[base], x, y), device)
        run_inst = partial(timed, partial(step, models[inst], optimizers[inst], x, y), device)
        ratios: list[float] = []
        with instrument(models[inst], optimizers[inst]):
            for i in range(warmup + steps):
                if i % 4 < 2:
                    b, t = run_base(), run_inst()
                else:
                    t, b = run_inst(), run_base()
                if i >= warmup:
                    result.base_ms.append(b)
                    ratios.append(t / b)
        result.by_role.append(ratios)
    return result


def copies(build: Callable[[], nn.Module], device: torch.device, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Two identical copies of a freshly built model on `device`."""
    torch.manual_seed(seed)
    first = build().to(device)
    return first, copy.deepcopy(first)

