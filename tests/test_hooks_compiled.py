"""The Monitor on models run through torch.compile: no graph breaks, no recompilation after warm-up,
the same statistics as eager, and compiled code that predates the monitor."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from analysis.hooks import Monitor
from analysis.models import build_model
from tests.test_hooks_stats import Net

KEY = ["step", "module", "kind", "stat", "call", "param"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def train(model: nn.Module, run: nn.Module, steps: int, monitor: Monitor | None = None, seed: int = 0) -> None:
    """`steps` SGD steps of `model`, calling `run` (the model itself or a compiled wrapper)."""
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    optimizer = monitor.optimizer if monitor is not None else torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=generator, dtype=dtype)
        y = torch.randint(0, 3, (4,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(run(x), y).backward()
        optimizer.step()


def monitored_frame(model: nn.Module, run: nn.Module, steps: int = 4, **options) -> pd.DataFrame:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Monitor(model, optimizer=optimizer, **options) as monitor:
        train(model, run, steps, monitor)
    return monitor.frame()


def twin_nets(dtype: torch.dtype) -> tuple[Net, Net]:
    torch.manual_seed(0)
    first = Net().to(dtype)
    second = Net().to(dtype)
    second.load_state_dict(first.state_dict())
    return first, second


def compare_frames(eager: pd.DataFrame, compiled: pd.DataFrame, rtol: float, atol: float) -> None:
    """Same rows and values, except that a module called twice per step (`act`) keeps only its last call
    in compiled code, which also places it after the module it follows in the forward pass."""
    eager = eager[~((eager.module == "act") & (eager.call == 0) & eager.kind.isin(["activation", "activation_grad"]))]
    e = eager.set_index(KEY).value.sort_index()
    c = compiled.set_index(KEY).value.sort_index()
    assert e.index.equals(c.index)
    pd.testing.assert_series_equal(e, c, rtol=rtol, atol=atol)
    assert len(e) >= 300


def test_compiled_model_records_the_eager_statistics():
    eager_net, compiled_net = twin_nets(torch.float64)
    eager = monitored_frame(eager_net, eager_net, every=2)
    compiled = monitored_frame(compiled_net, torch.compile(compiled_net, backend="aot_eager"), every=2)
    assert set(compiled.kind) == {"activation", "activation_grad", "block", "param_grad", "weight", "update",
                                  "global"}
    assert sorted(compiled.step.unique()) == [0, 2]
    compare_frames(eager, compiled, rtol=1e-9, atol=1e-12)
    # forward order: that of each module's last call
    order = compiled[compiled.kind == "activation"].groupby("module")["index"].min().sort_values()
    assert list(order.index)[-3:] == ["fc2", "act", "out"]


def test_inductor_kernels_match_eager():
    eager_net, compiled_net = twin_nets(torch.float32)
    eager = monitored_frame(eager_net, eager_net, steps=2, every=1, stats=["activation", "activation_grad"])
    compiled = monitored_frame(compiled_net, torch.compile(compiled_net), steps=2, every=1,
                               stats=["activation", "activation_grad"])
    compare_frames(eager, compiled, rtol=1e-4, atol=1e-6)


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def test_the_monitor_adds_no_graph_breaks_and_no_recompilation():
    torch.manual_seed(0)
    model = build_model(8)
    run = torch.compile(model, backend="aot_eager")
    train(model, run, 2)
    assert (graph_breaks(), counters["stats"]["unique_graphs"]) == (0, 1)

    torch._dynamo.reset()
    counters.clear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=2) as monitor:
        train(model, run, 4, monitor)  # warm-up: a recorded and an unrecorded step, twice
        warm = counters["stats"]["unique_graphs"]
        train(model, run, 4, monitor)
    assert graph_breaks() == 0
    assert warm == 2  # one graph for recorded steps, one for the others
    assert counters["stats"]["unique_graphs"] == warm  # reused, never recompiled
    frame = monitor.frame()
    assert sorted(frame.step.unique()) == [0, 2, 4, 6]
    per_step = frame.groupby(["step", "kind"]).size().unstack()
    assert (per_step.nunique() == 1).all()  # the same rows at every recorded step
    assert per_step.loc[0, "activation"] > 0 and per_step.loc[0, "activation_grad"] > 0
    assert per_step.loc[0, "block"] == 4 * 3  # 3 blocks x (shortcut_norm, branch_norm, ratio, cosine)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def activation_modules(frame: pd.DataFrame) -> list[str]:
    return sorted(frame[frame.kind == "activation"].module.unique())


@pytest.mark.parametrize("attach_to", ["model", "compiled wrapper", "another instance of its class"])
def test_a_monitor_attached_after_compilation_resets_and_records(attach_to):
    torch.manual_seed(0)
    model = small_net()
    run = torch.compile(model, backend="aot_eager")
    train(model, run, 1)  # compiled code now exists, traced without hooks
    if attach_to == "another instance of its class":  # compiled code is shared between instances
        model = small_net()
        run = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(run if attach_to == "compiled wrapper" else model, optimizer=optimizer, every=1)
    with pytest.warns(RuntimeWarning, match=r"compiled code may exist for the model from before the monitor "
                                            r"was attached.*torch._dynamo.reset"):
        monitor.__enter__()
    try:
        train(model, run, 2, monitor)
    finally:
        monitor.close()
    frame = monitor.frame()
    assert activation_modules(frame) == ["0", "1", "3"]  # named as the unwrapped model
    assert sorted(frame[frame.kind == "activation"].step.unique()) == [0, 1]
    assert (frame.kind == "activation_grad").any()


def test_an_unmonitored_instance_compiled_first_does_not_lend_its_code():
    torch.manual_seed(0)
    plain, monitored = small_net(), small_net()
    run_plain, run_monitored = (torch.compile(m, backend="aot_eager") for m in (plain, monitored))
    saved = torch._dynamo.config.skip_nnmodule_hook_guards
    optimizer = torch.optim.SGD(monitored.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Monitor(monitored, optimizer=optimizer, every=1) as monitor:
            assert torch._dynamo.config.skip_nnmodule_hook_guards is False
            train(plain, run_plain, 1)
            train(monitored, run_monitored, 2, monitor)
    assert torch._dynamo.config.skip_nnmodule_hook_guards is saved
    frame = monitor.frame()
    assert activation_modules(frame) == ["0", "1", "3"]
    assert sorted(frame[frame.kind == "activation"].step.unique()) == [0, 1]


def test_no_warning_when_nothing_was_compiled_before():
    model = nn.Sequential(nn.Linear(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Monitor(torch.compile(model, backend="aot_eager"), every=1):
            pass
