"""The overhead benchmark: its table, its targets and its graph-break count, on real (small) runs."""

from __future__ import annotations

import argparse

import pytest
import torch

from analysis.bench import overhead
from analysis.bench.__main__ import main
from analysis.bench.overhead import DEFAULT_CADENCE, Result


def test_the_table_states_each_target_and_where_the_time_goes():
    name = "ResNet-56 (CIFAR, analysis.models)"
    results = [
        Result(name, "cpu", "full set", 400.0, 1.25, (1.2, 1.3), 1.06),
        Result(name, "cpu", "activation group", 400.0, 1.15, (1.1, 1.2)),
        Result(name, "cpu", "param_grad.norm", 400.0, 1.01, (0.99, 1.02)),
        Result(name, "cpu", DEFAULT_CADENCE, 400.0, 1.012, None, 1.01),
    ]
    text = overhead.markdown(results, steps=10, image=32, load=(0.5, 1.0))
    assert f"| {name} | cpu | full set | 400.0 | 500.0 | 1.250 | 1.200-1.300 | 1.060 |" in text
    assert f"| {name} | cpu | {DEFAULT_CADENCE} | 400.0 | 404.8 | 1.012 |  | 1.010 |" in text
    assert f"- {name}, cpu, full set: at most 1.15x; measured 1.250x (missed by 0.100)." in text
    assert f"- {name}, cpu, param_grad.norm: at most 1.03x; measured 1.010x (met)." in text
    assert (f"- {name}, cpu: a recorded full-set step adds 100.0 ms; the activation group alone adds 60.0 ms "
            "(60%), output gradients, blocks and parameter statistics the other 40.0 ms.") in text


def test_graph_breaks_with_and_without_the_monitor():
    assert overhead.graph_breaks("resnet8", torch.device("cpu"), monitored=False) == (0, 1)
    assert overhead.graph_breaks("resnet8", torch.device("cpu"), monitored=True) == (0, 2)


def test_a_small_run_measures_every_statistic_set(monkeypatch):
    full_batch = overhead.batch
    monkeypatch.setattr(overhead, "batch", lambda device, image=32: full_batch(device, size=8, image=image))
    results = overhead.overhead(["resnet8"], [torch.device("cpu")], steps=1, memory=False)
    labels = [r.label for r in results]
    assert labels == [overhead.UNRECORDED, *overhead.STAT_SETS, DEFAULT_CADENCE]
    assert all(r.base_ms > 0 and r.ratio > 0 for r in results)
    unrecorded, full, cadence = results[0].ratio, results[1].ratio, results[-1].ratio
    assert cadence == pytest.approx((24 * unrecorded + full) / 25)


@pytest.mark.parametrize("argv, message", [
    (["overhead", "--models", "resnet9"], "--models must be comma-separated keys from"),
    (["overhead", "--steps", "0"], "--steps must be an integer >= 1; got '0'"),
    (["overhead", "--image", "16"], "--image must be an integer >= 32; got '16'"),
    (["overhead", "--device", "tpu"], "--device must be one of cpu, cuda, auto; got 'tpu'"),
    (["reductions", "--calls", "0"], "--calls must be an integer >= 1; got '0'"),
    (["reductions", "--device", "tpu"], "--device must be one of cpu, cuda, auto; got 'tpu'"),
])
def test_invalid_options_name_themselves(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_parser_defaults():
    parser = argparse.ArgumentParser()
    overhead.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["overhead"])
    assert (args.models, args.compiled, args.steps, args.image) == (
        ["resnet56", "resnet50", "tv-resnet18"], ["resnet56"], 10, 32)
    assert parser.parse_args(["overhead", "--no-compiled"]).compiled == []
