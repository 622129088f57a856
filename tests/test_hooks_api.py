"""Monitor API: validation errors, selection, cadence, stats filter, frame layout."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from analysis.hooks import COLUMNS, DEFAULT_EVERY, Monitor, log_steps, select
from analysis.models import build_model


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 2))


def train(monitor: Monitor, model: nn.Module, optimizer: torch.optim.Optimizer | None, steps: int) -> None:
    x = torch.randn(3, 4)
    for _ in range(steps):
        if optimizer is not None:
            optimizer.zero_grad()
        model(x).square().mean().backward()
        if optimizer is not None:
            optimizer.step()
        else:
            monitor.step()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "every"),
        ({"every": -3}, "every"),
        ({"every": True}, "every"),
        ({"every": 2.5}, "every"),
        ({"every": "10"}, "every"),
        ({"every": []}, "every"),
        ({"every": [0, -1]}, "every"),
        ({"include": 3}, "include"),
        ({"exclude": [nn.Linear, 1.0]}, "exclude"),
        ({"include": "nothing*"}, "select no module"),
        ({"include": [nn.Conv2d]}, "select no module"),
        ({"stats": ["activation", "activation.median"]}, "unknown statistic 'activation.median'"),
        ({"stats": "curvature"}, "known: activation, activation_grad"),
        ({"stats": []}, "stats"),
        ({"stats": ["update"]}, "need optimizer"),
        ({"stats": ["global.lr"]}, "need optimizer"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"flush_rows": 0}, "flush_rows"),
        ({"flush_seconds": 0}, "flush_seconds must be a number of seconds > 0"),
        ({"flush_seconds": -1.0}, "flush_seconds"),
        ({"flush_seconds": float("nan")}, "flush_seconds"),
        ({"flush_seconds": "5"}, "flush_seconds"),
        ({"flush_seconds": True}, "flush_seconds"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Monitor(tiny(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        Monitor(lambda x: x)


def test_unknown_stat_lists_every_known_name():
    with pytest.raises(ValueError) as error:
        Monitor(tiny(), stats=["nope"])
    for name in ("activation.dead_fraction", "update.ratio", "block.cosine", "global.grad_norm"):
        assert name in str(error.value)


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="path"):
        Monitor(tiny(), path=tmp_path / "f")


def test_step_with_optimizer_and_double_enter_are_errors():
    model = tiny()
    monitor = Monitor(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with monitor:
        with pytest.raises(RuntimeError, match="optimizer.step"):
            monitor.step()
        with pytest.raises(RuntimeError, match="already attached"):
            monitor.__enter__()


@pytest.mark.parametrize("total, n", [(0, 3), (10, 0), (5.0, 2), (True, 2)])
def test_log_steps_validation(total, n):
    with pytest.raises(ValueError):
        log_steps(total, n)


@pytest.mark.parametrize("total, n", [(1000, 10), (50_000, 40), (7, 7), (7, 20), (100, 2), (30, 25)])
def test_log_steps(total, n):
    steps = log_steps(total, n)
    assert steps == sorted(set(steps)) and len(steps) == min(n, total)
    assert steps[0] == 0 and steps[-1] == total - 1
    if total > 100 * n:
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        assert gaps[-1] > 10 * gaps[0]


@pytest.mark.parametrize("every, expected", [(3, [0, 3, 6]), ([1, 5, 100], [1, 5]), (1, list(range(8)))])
def test_cadence(every, expected):
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=every) as monitor:
        train(monitor, model, optimizer, 8)
        assert monitor.current_step == 8
    assert sorted(monitor.frame().step.unique()) == expected


def test_first_step_numbers_steps_and_anchors_the_cadence():
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=3, first_step=1) as monitor:
        train(monitor, model, optimizer, 8)
        assert monitor.current_step == 9
    assert sorted(monitor.frame().step.unique()) == [1, 4, 7]
    with pytest.raises(ValueError, match="first_step"):
        Monitor(model, first_step=-1)


def test_default_cadence():
    model = tiny()
    monitor = Monitor(model)
    assert monitor.every == DEFAULT_EVERY
    with monitor:
        train(monitor, model, None, DEFAULT_EVERY + 1)
    assert sorted(monitor.frame().step.unique()) == [0, DEFAULT_EVERY]


def test_unrecorded_step_leaves_no_state():
    model = tiny()
    with Monitor(model, every=2) as monitor:
        train(monitor, model, None, 1)
        model(torch.randn(3, 4)).sum().backward()
        state = monitor._state
        assert not state.recording and not state.calls and not state.tensor_handles
        assert all(not batch.raws for batch in state.batches.values())


def test_frame_columns_and_types():
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        train(monitor, model, optimizer, 2)
    frame = monitor.frame()
    assert tuple(frame.columns) == COLUMNS
    assert frame["rank"].dtype == "int64" and (frame["rank"] == 0).all()  # not distributed
    assert set(frame.kind) == {"activation", "activation_grad", "param_grad", "weight", "update", "global"}
    for column in ("step", "index", "call"):
        assert frame[column].dtype == "int64"
    assert frame.value.dtype == "float64"
    params = frame[frame.kind.isin(["param_grad", "weight", "update"])]
    assert set(params.param) == {"weight", "bias"} and set(params.module) == {"0", "3"}
    assert frame[frame.kind == "activation"].param.map(lambda p: p is None).all()
    lr = frame[frame.stat == "lr"]
    assert lr.param.tolist() == ["group0", "group0"] and lr.value.tolist() == [0.1, 0.1]
    # no module ran twice; Dropout is not selected by default
    assert (frame.call == 0).all() and "2" not in set(frame.module)


def test_stats_filter():
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = ["activation.rms", "param_grad", "global.grad_norm"]
    with Monitor(model, optimizer=optimizer, every=1, stats=stats) as monitor:
        train(monitor, model, optimizer, 1)
    frame = monitor.frame()
    assert set(zip(frame.kind, frame.stat)) == {
        ("activation", "rms"), ("param_grad", "norm"), ("param_grad", "rms"), ("param_grad", "absmax"),
        ("param_grad", "nonfinite"), ("global", "grad_norm"),
    }


def test_without_optimizer_no_update_or_lr():
    model = tiny()
    with Monitor(model, every=1) as monitor:
        train(monitor, model, None, 1)
    frame = monitor.frame()
    assert "update" not in set(frame.kind) and set(frame[frame.kind == "global"].stat) == {"grad_norm"}


def test_default_selection_on_project_resnet():
    model = build_model(8)
    selection = select(model)
    names = {name for name, _ in selection.modules}
    expected = {"stages.0.0.branch", "stages.0.0.shortcut", "stages.0.0.branch.0", "stages.0.0.relu", "fc"}
    assert expected <= names
    assert "stages.0.0" not in names and "stages" not in names and "" not in names
    assert [name for name, _ in selection.blocks] == ["stages.0.0", "stages.1.0", "stages.2.0"]
    assert len(selection.params) == len(list(model.parameters()))


def test_include_exclude():
    model = build_model(8)
    convs = select(model, include=nn.Conv2d)
    assert all(isinstance(m, nn.Conv2d) for _, m in convs.modules) and not convs.blocks
    assert {owner for owner, *_ in convs.params} == {name for name, _ in convs.modules}
    stage = select(model, include="stages.1.*", exclude=["*.relu", nn.BatchNorm2d])
    names = [name for name, _ in stage.modules]
    assert names and all(n.startswith("stages.1.") for n in names)
    assert not any(n.endswith("relu") or "branch.1" in n for n in names)
    assert [name for name, _ in stage.blocks] == ["stages.1.0"]
    no_shortcut = select(model, exclude="*.shortcut")
    assert not no_shortcut.blocks


def test_plain_network_has_no_block_rows():
    model = build_model(8, residual=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()
    frame = monitor.frame()
    assert "block" not in set(frame.kind) and not select(model).blocks


def test_residual_blocks_recorded_per_block():
    model = build_model(14)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()
    block = monitor.frame().query("kind == 'block'")
    assert block.module.nunique() == 6 and len(block) == 6 * 4
    ratio = block.pivot(index="module", columns="stat", values="value")
    assert (ratio.ratio - ratio.branch_norm / ratio.shortcut_norm).abs().max() < 1e-9
    assert ratio.cosine.between(-1, 1).all()


def test_block_stats_alone_match_full_set():
    frames = []
    for stats in (None, ["block"]):
        torch.manual_seed(0)
        model = build_model(8)
        with Monitor(model, every=1, stats=stats) as monitor:
            model(torch.randn(2, 3, 32, 32))
            monitor.step()
        frames.append(monitor.frame().query("kind == 'block'").reset_index(drop=True))
    full, alone = frames
    assert len(alone) == 3 * 4 and set(monitor.frame().kind) == {"block"}
    assert (alone[["module", "stat"]] == full[["module", "stat"]]).all().all()
    assert (alone.value - full.value).abs().max() <= 1e-6 * full.value.abs().max()


def test_forward_passes_while_paused_are_not_recorded():
    batch = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))  # leaves the global generator alone

    def run(evaluate: str) -> pd.DataFrame:
        model = tiny()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor(model, optimizer=optimizer, every=1) as monitor:
            train(monitor, model, optimizer, 1)
            if evaluate == "paused":
                with monitor.paused(), torch.no_grad():
                    model(batch)
            elif evaluate == "recorded":
                with torch.no_grad():
                    model(batch)
            train(monitor, model, optimizer, 1)
        return monitor.frame()

    alone, paused, recorded = run("none"), run("paused"), run("recorded")
    pd.testing.assert_frame_equal(paused, alone)
    # unpaused, the evaluation counts as the next step's first call and the training pass becomes call 1
    step_1 = recorded[(recorded.step == 1) & (recorded.kind == "activation")]
    assert sorted(step_1.call.unique()) == [0, 1]
    pd.testing.assert_series_equal(
        step_1[step_1.call == 1].value.reset_index(drop=True),
        alone[(alone.step == 1) & (alone.kind == "activation")].value.reset_index(drop=True))
