"""The one-pass compiled reduction of big module outputs: its values, when it is used, and its fallback."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from analysis.hooks import Monitor, one_pass, statistics
from tests.test_hooks_work import OpLog


def big_output(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A post-ReLU conv-shaped output of one_pass.MIN_NUMEL elements with a dead channel."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(16, 8, 64, 64)).to(dtype)
    x[:, 2] = 0
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_rows_match_direct_computation(dtype):
    torch.manual_seed(1)
    v = torch.randn(6, 50).to(dtype)
    v[0, :10] = 0
    v[1, 3], v[1, 7], v[2, 0] = math.nan, math.inf, -math.inf
    compute = statistics.compute_dtype(dtype)
    rows = one_pass.rows(v, compute)
    assert rows.shape == (len(one_pass.ROWS), 6) and rows.dtype == compute
    a = v.double().numpy()
    expected = {"sum": a.sum(1), "sumsq": (a * a).sum(1), "min": a.min(1), "max": a.max(1),
                "zeros": (a == 0).sum(1), "nonfinite": (~np.isfinite(a)).sum(1)}
    for name, actual in zip(one_pass.ROWS, rows.double().numpy()):
        np.testing.assert_allclose(actual, expected[name], rtol=1e-6, atol=1e-5, equal_nan=True, err_msg=name)


COLUMNS = ("sum", "sumsq", "minmax", "minmax", "zeros", "zeros", "nonfinite")
"""The part each column of `statistics.activation`'s raw vector belongs to."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stats", [None, ["activation.mean", "activation.zero_fraction"], ["activation.dead_fraction"],
                                   ["activation.absmax", "activation.nonfinite"]])
def test_one_pass_raw_vector_equals_stock_ops(dtype, stats):
    parts = statistics.ALL_PARTS if stats is None else statistics.KINDS["activation"].parts(
        name.split(".")[1] for name in stats)
    x = big_output(dtype)
    fused = statistics.activation(x, 1, parts=parts, one_pass=True)
    stock = statistics.activation(x, 1, parts=parts, one_pass=False)
    assert fused.dtype == stock.dtype == statistics.compute_dtype(dtype)
    asked = [i for i, part in enumerate(COLUMNS) if part in parts]
    torch.testing.assert_close(fused[asked], stock[asked], rtol=1e-6, atol=0)
    assert not fused[[i for i in range(len(COLUMNS)) if i not in asked]].any()  # unrequested columns hold 0
    if "zeros" in parts:  # the zeros and the dead channel, counted exactly
        assert fused[5].item() == 1 and fused[4].item() == float((x == 0).sum())


def test_nonfinite_values_are_counted_in_the_one_pass():
    x = big_output()
    x[0, 0, 0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    raw = statistics.activation(x, 1, one_pass=True)
    assert raw[6].item() == 3 and math.isnan(raw[0].item())
    assert raw[4].item() == float((x == 0).sum()) and raw[5].item() == 1


def passes(x: torch.Tensor, parts: statistics.Parts, channel_dim: int = 1) -> set[str]:
    with OpLog() as log:
        statistics.activation(x, channel_dim, parts=parts, one_pass=True)
    return set(log.ops)


def test_stock_operations_serve_where_one_pass_would_not_pay():
    x = big_output()
    statistics.activation(x, 1, one_pass=True)  # compiled before counting
    full = statistics.ALL_PARTS
    assert not passes(x, full) & {"aminmax", "dot"}  # read once: no stock min/max or dot product
    assert "aminmax" in passes(x[:8], full)  # below MIN_NUMEL
    assert "aminmax" in passes(x.transpose(2, 3), full)  # not contiguous
    assert "aminmax" in passes(x.reshape(16, 2048, 4, 4), full)  # rows of 16 < MIN_ROW elements
    assert passes(x, frozenset({"sum"})) & {"amin", "amax", "aminmax", "eq"} == set()  # one stock pass
    assert "dot" in passes(x, frozenset({"sum", "sumsq"}))  # two passes as fast as the one pass
    assert "aminmax" not in passes(x, frozenset({"minmax", "nonfinite"}))  # min/max and the CPU's probe
    sequence = x.flatten(2).transpose(1, 2).contiguous()  # (batch, positions, channels)
    assert "aminmax" in passes(sequence, full, channel_dim=-1)


def test_a_failed_compilation_warns_once_and_falls_back(monkeypatch):
    def broken():
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(one_pass, "_compiled", broken)
    monkeypatch.setattr(one_pass, "_unavailable", set())
    x = big_output()
    stock = statistics.activation(x, 1)
    with pytest.warns(RuntimeWarning, match=r"unavailable on cpu \(RuntimeError: no C\+\+ compiler found\)"):
        first = statistics.activation(x, 1, one_pass=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = statistics.activation(x, 1, one_pass=True)
    assert torch.equal(first, stock) and torch.equal(second, stock)


def test_monitor_one_pass_matches_stock_and_is_validated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    x = torch.randn(16, 3, 64, 128)  # outputs of one_pass.MIN_NUMEL elements
    frames = []
    for flag in (True, False):
        with Monitor(model, every=1, stats="activation", one_pass=flag) as monitor:
            model(x).sum().backward()
            monitor.step()
        frames.append(monitor.frame().set_index(["module", "stat"]).value)
    np.testing.assert_allclose(frames[0].to_numpy(), frames[1].to_numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="one_pass must be True or False; got 'yes'"):
        Monitor(model, one_pass="yes")
