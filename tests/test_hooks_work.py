"""The Monitor's work is in proportion to the statistics asked for: the operations one recorded step
adds to a training step, counted at the dispatcher."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from analysis.hooks import Monitor, statistics

# Passes over whole tensors; everything else a recorded step adds is bookkeeping on small vectors.
PASSES = {"sum", "dot", "aminmax", "eq", "isfinite", "_foreach_norm", "_foreach_mul", "_foreach_sub_",
          "linalg_vector_norm"}


class OpLog(TorchDispatchMode):
    """Counts the aten operations run inside the block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def added_passes(stats: list[str] | None) -> dict[str, int]:
    """Whole-tensor passes a recorded step adds: the ops of a monitored step minus those of the same step
    without a monitor (a conv, a ReLU and a linear layer: 3 hooked modules, 4 parameters). The outputs are
    smaller than `one_pass.MIN_NUMEL`, so these are the stock passes (`test_hooks_one_pass` has the other)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    with OpLog() as plain:
        step()
    with Monitor(model, optimizer=optimizer, every=1, stats=stats), OpLog() as monitored:
        step()
    return {op: n for op, n in (monitored.ops - plain.ops).items() if op in PASSES}


@pytest.mark.parametrize("stats, passes", [
    (["param_grad.norm"], {"_foreach_norm": 1}),
    (["weight.norm"], {"_foreach_norm": 1}),
    (["global.grad_norm"], {"_foreach_norm": 1}),
    (["param_grad.absmax"], {"aminmax": 4}),
    (["activation.mean"], {"sum": 3}),
    (["activation.rms"], {"dot": 3}),
    (["activation.mean", "activation.std"], {"sum": 3, "dot": 3}),
    (["activation.absmax"], {"aminmax": 3}),
    # x == 0 and its per-channel sum, then two sums and a comparison on the per-channel counts
    (["activation.zero_fraction", "activation.dead_fraction"], {"eq": 3 + 3, "sum": 3 + 6}),
    (["activation.nonfinite"], {"dot": 3}),  # the CPU's finiteness probe; counted only where it fails
    (["activation_grad.rms"], {"dot": 3}),
    (["activation_grad.absmax"], {"aminmax": 3}),
    (["update.ratio"], {"_foreach_mul": 1, "_foreach_norm": 2, "_foreach_sub_": 1}),
])
def test_each_statistic_pays_only_for_its_own_passes(stats, passes):
    assert added_passes(stats) == passes


def test_the_full_set_adds_up_its_parts():
    full = added_passes(None)
    # sums: mean, zeros (3 each), and the gradient norms' finiteness probe
    assert full == {"sum": 3 + 9 + 1, "dot": 3 + 3, "aminmax": 3 + 3 + 4, "eq": 6, "_foreach_norm": 1 + 1 + 2,
                    "_foreach_mul": 1, "_foreach_sub_": 1}


def test_parts_of_each_kind():
    kinds = statistics.KINDS
    assert kinds["activation"].parts(["mean", "std"]) == {"sum", "sumsq"}
    assert kinds["activation"].parts(["dead_fraction"]) == {"zeros"}
    assert kinds["param_grad"].parts(["rms"]) == {"norm"}
    assert kinds["weight"].parts(["norm"]) == frozenset()


def test_an_unrecorded_step_adds_no_operation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(3, 5)

    def step() -> None:
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()

    with OpLog() as plain:
        step()
    with Monitor(model, optimizer=optimizer, every=[5]), OpLog() as unrecorded:
        step()
    assert unrecorded.ops == plain.ops
