"""TensorBoard export: every monitor row comes back from the event files under its tag, at its step."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from analysis.extras import MissingExtra
from analysis.hooks import Monitor
from analysis.hooks.export import scalar_tag, to_tensorboard


class Twice(nn.Module):
    """Applies one ReLU twice, so its rows have calls 0 and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(self.relu(x)))


def monitored_rows(path=None) -> pd.DataFrame:
    torch.manual_seed(0)
    model = Twice()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=2, path=path) as monitor:
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).square().mean().backward()
            optimizer.step()
    return monitor.frame()


def read_back(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_rows_round_trip_through_the_event_files(tmp_path):
    frame = monitored_rows()
    assert to_tensorboard(frame, tmp_path / "tb") == len(frame)

    scalars = read_back(tmp_path / "tb")
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in frame.sort_values("step").itertuples():
        expected.setdefault(scalar_tag(row.kind, row.stat, row.module, row.param, row.call), []).append(
            (row.step, row.value))
    assert scalars.keys() == expected.keys()
    for tag, points in expected.items():
        steps, values = zip(*points)
        assert [step for step, _ in scalars[tag]] == list(steps) == [0, 2, 4], tag
        np.testing.assert_allclose([value for _, value in scalars[tag]], values, rtol=1e-6, err_msg=tag)
    assert {"activation/rms/relu", "activation/rms/relu/call1", "param_grad/norm/fc.weight", "update/ratio/fc.bias",
            "global/grad_norm", "global/lr/group0"} <= scalars.keys()


def test_a_monitor_path_is_read(tmp_path):
    frame = monitored_rows(tmp_path / "stats.parquet")
    assert to_tensorboard(tmp_path / "stats.parquet", tmp_path / "tb") == len(frame)
    assert sum(map(len, read_back(tmp_path / "tb").values())) == len(frame)


def test_each_rank_goes_to_its_own_run(tmp_path):
    frame = monitored_rows()
    ranks = pd.concat([frame.assign(rank=0), frame.assign(rank=1, value=frame.value * 2)], ignore_index=True)
    assert to_tensorboard(ranks, tmp_path / "tb") == 2 * len(frame)
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["rank0", "rank1"]
    first, second = read_back(tmp_path / "tb" / "rank0"), read_back(tmp_path / "tb" / "rank1")
    assert first.keys() == second.keys() and sum(map(len, first.values())) == len(frame)
    np.testing.assert_allclose([v for _, v in second["global/grad_norm"]],
                               [2 * v for _, v in first["global/grad_norm"]], rtol=1e-6)


def test_tags():
    assert scalar_tag("activation", "rms", "layer1.0.conv1") == "activation/rms/layer1.0.conv1"
    assert scalar_tag("param_grad", "norm", "fc", "weight") == "param_grad/norm/fc.weight"
    assert scalar_tag("activation", "rms", "relu", None, 2) == "activation/rms/relu/call2"
    assert scalar_tag("global", "grad_norm", "", None) == "global/grad_norm"
    assert scalar_tag("global", "lr", "", "group1") == "global/lr/group1"


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="frame_or_path must be a DataFrame"):
        to_tensorboard([1, 2], tmp_path)
    with pytest.raises(ValueError, match="lack the column.*stat, module"):
        to_tensorboard(pd.DataFrame({"step": [0], "kind": ["x"], "value": [1.0]}), tmp_path)
    with pytest.raises(ValueError, match="log_dir must be"):
        to_tensorboard(monitored_rows(), None)
    with pytest.raises(FileNotFoundError):
        to_tensorboard(tmp_path / "missing", tmp_path / "tb")


def test_without_tensorboard_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtra, match=r"TensorBoard export needs the 'integrations' extra.*"
                                           r"pip install 'trainability-lab\[integrations\]'"):
        to_tensorboard(monitored_rows(), tmp_path / "tb")
