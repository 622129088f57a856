"""The peer benchmark: its options, its markdown, each peer instrument on a tiny model, one end-to-end run.

The peers come with the `bench` extra, which CI does not install: a peer's test is skipped where its
package is missing (TensorBoard comes with the `integrations` extra too).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from analysis.bench import options, peers, timing
from analysis.bench.options import OptionError
from analysis.bench.peers import Measure, Report, Row
from analysis.hooks import Monitor

ROOT = Path(__file__).resolve().parents[1]


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


TINY_PARAMS = 6


def setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = tiny()
    x, y = timing.batch(torch.device("cpu"), size=4, image=8)
    return model, timing.optimizer_for(model), x, y


def hooks(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Module hooks of every kind, tensor hooks on the parameters and optimizer step hooks."""
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  + len(m._backward_pre_hooks) for m in model.modules())
    tensors = sum(len(p._backward_hooks or {}) for p in model.parameters())
    return modules + tensors + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench")
    peers.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


# -- options -------------------------------------------------------------------------------

def test_the_defaults():
    args = parser().parse_args(["peers"])
    assert (args.out, args.steps, args.models, args.device, args.peers, args.run) == (
        Path("benchmarks/peers.md"), 10, ["resnet56", "tv-resnet18"], "auto",
        ["fastai", "torchlens", "wandb", "tensorboard", "cockpit"], peers.run)
    args = parser().parse_args(["peers", "--steps", "3", "--models", "resnet8", "--device", "cpu",
                                "--peers", "wandb,tensorboard,wandb"])
    assert (args.steps, args.models, args.device, args.peers) == (3, ["resnet8"], "cpu", ["wandb", "tensorboard"])


@pytest.mark.parametrize("option, value, message", [
    ("--models", "resnet8,resnet9",
     "--models must be comma-separated keys from resnet56, resnet50, tv-resnet18, resnet8; got 'resnet8,resnet9'"),
    ("--models", "", "--models must be comma-separated keys from resnet56, resnet50, tv-resnet18, resnet8; got ''"),
    ("--peers", "fastai,tensorbord",
     "--peers must be comma-separated keys from fastai, torchlens, wandb, tensorboard, cockpit; "
     "got 'fastai,tensorbord'"),
    ("--steps", "0", "--steps must be an integer >= 1; got '0'"),
    ("--steps", "ten", "--steps must be an integer >= 1; got 'ten'"),
    ("--device", "tpu", "--device must be one of cpu, cuda, auto; got 'tpu'"),
])
def test_an_invalid_option_names_itself_and_its_values(option, value, message, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["peers", option, value])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench peers: error: argument {option}: {message}"
    # run() checks options given as strings too (a Namespace built in code), before measuring anything
    args = argparse.Namespace(out=Path("unused.md"), steps="1", models="resnet8", device="cpu", peers="tensorboard")
    setattr(args, option[2:], value)
    with pytest.raises(ValueError, match=re.escape(message)):
        peers.run(args)


def test_cuda_asked_for_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match=r"^--device cuda: CUDA is not available here; use cpu or auto$"):
        options.devices_for("cuda")
    assert options.devices_for("auto") == [torch.device("cpu")]


# -- the markdown ----------------------------------------------------------------------------

def cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_the_markdown_puts_each_value_in_its_column():
    model = "ResNet-8 (CIFAR, analysis.models)"
    rows = [
        Row("cpu", model, "TensorBoard add_histogram", "param_grad, weight",
            peer=Measure(1.5, (1.4, 1.5, 1.6), 100.0, 50), monitor=Measure(1.1, (1.05, 1.1, 1.2), 80.0, 40)),
        Row("cpu", model, "fastai ActivationStats", "activation.mean", peer_note="not installed: "
            + peers.PEERS["fastai"].install_command(), monitor_note="not run"),
        Row("cpu", model, "Cockpit economy", "param_grad.norm", peer_note=peers.error_note(RuntimeError("a | b\nmore")),
            monitor=Measure(1.2, (1.0, 1.2, 1.3), 90.0, 0)),
        Row("cpu", model, "Monitor, full set", "all (stats=None)",
            monitor=Measure(1.25, (1.2, 1.25, 1.3), 120.0, 100)),
    ]
    report = Report(rows, "python -m analysis.bench peers --steps 7", 7, (1.25, 2.5),
                    {"tensorboard": "2.21.0", "fastai": "not installed"}, "x86_64, 2 CPUs, torch 9.9 with 2 threads",
                    ["tensorboard", "fastai", "cockpit"])
    text = peers.markdown(report)
    assert "Generated by `python -m analysis.bench peers --steps 7` on x86_64, 2 CPUs, torch 9.9 with 2 threads. " \
           "Load average 1.2 before and 2.5 after." in text
    assert "Measured pairs per role: 7" in text
    assert "Installed versions: tensorboard 2.21.0, fastai not installed." in text
    assert "## ResNet-8 (CIFAR, analysis.models), cpu; uninstrumented step 95.0 ms" in text
    table = [cells(line) for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == ["tool", "ratio", "q1–q3", "tensors/step", "ms/tensor", "Monitor statistics",
                        "Monitor ratio", "q1–q3", "tensors/step", "ms/tensor"]
    assert table[2] == ["TensorBoard add_histogram", "1.500", "1.400–1.600", "50", "1.0000",
                        "param_grad, weight", "1.100", "1.050–1.200", "40", "0.2000"]
    assert table[3] == ["fastai ActivationStats", "not installed: pip install 'trainability-lab[bench]'", "", "", "",
                        "activation.mean", "not run", "", "", ""]
    assert table[4] == ["Cockpit economy", "failed: RuntimeError: a | b", "", "", "",
                        "param_grad.norm", "1.200", "1.000–1.300", "0", ""]
    assert table[5] == ["Monitor, full set", "", "", "", "", "all (stats=None)", "1.250", "1.200–1.300", "100",
                        "0.3000"]
    assert len(table) == 6


def test_the_peers_are_pinned_as_in_the_bench_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = set(extras["bench"])
    for peer in peers.PEERS.values():
        assert set(peer.distributions) <= {requirement.split("==")[0] for requirement in pinned}, peer.key
        assert all("==" in requirement for requirement in pinned)
        assert peer.install_command() == "pip install 'trainability-lab[bench]'"
    assert not any("bench" in requirement for requirement in extras["all"])


# -- the instruments -------------------------------------------------------------------------

def test_the_monitor_counterparts_record_the_same_statistics():
    expected = {
        "fastai": ("activation.mean", "activation.std", "activation.zero_fraction"),
        "torchlens": ("activation",),
        "wandb": ("param_grad", "weight"),
        "tensorboard": ("param_grad", "weight"),
        "cockpit": ("param_grad.norm", "update.ratio", "weight.norm"),
    }
    assert {key: peer.stats for key, peer in peers.PEERS.items()} == expected
    assert peers.PEERS["fastai"].include is peers.leaves_with_parameters
    assert all(peer.include is None for key, peer in peers.PEERS.items() if key != "fastai")
    model, optimizer, x, y = setup()
    assert peers.leaves_with_parameters(model) == ["0", "1", "5"]
    for peer in peers.PEERS.values():  # every counterpart is a valid Monitor
        Monitor(model, optimizer=optimizer, stats=peer.stats,
                include=peer.include(model) if peer.include else None)


def monitor_count(peer: peers.Peer, tmp_path: Path) -> int:
    model, optimizer, x, y = setup()
    instrument = peers.monitor_instrument(peer.stats, peer.include, tmp_path)
    return peers._count_monitor(instrument, (x, y))(model, optimizer)


def attached(key: str, tmp_path: Path, steps: int = 2) -> tuple[peers.Session, nn.Module]:
    """Two steps of the tiny model with peer `key` attached for counting; its hooks are there while
    attached and gone afterwards."""
    model, optimizer, x, y = setup()
    with peers.PEERS[key].attach(model, optimizer, tmp_path, True) as session:
        assert hooks(model, optimizer) > 0
        for _ in range(steps):
            peers.step(model, optimizer, x, y)
        assert session.tensors is not None
    assert hooks(model, optimizer) == 0
    assert model not in peers._STEPS
    peers.step(model, optimizer, x, y)  # a plain step still trains the model afterwards
    return session, model


def test_tensorboard_writes_a_histogram_of_every_parameter_and_gradient(tmp_path):
    pytest.importorskip("tensorboard")
    session, _ = attached("tensorboard", tmp_path)
    assert session.tensors == 2 * TINY_PARAMS == monitor_count(peers.PEERS["tensorboard"], tmp_path)
    events = list(tmp_path.glob("tensorboard-*/events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 1000


def test_fastai_activation_stats_without_a_learner(tmp_path):
    pytest.importorskip("fastai.callback.hook")
    from fastai.callback.hook import flatten_model, has_params

    session, model = attached("fastai", tmp_path)
    callback = session.tool
    assert len(callback.stats) == 2
    assert [sorted(s) for s in callback.stats[-1]] == [["hist", "mean", "near_zero", "std"]] * 3
    assert callback.stats[-1][0]["hist"].shape == (40,)
    assert session.tensors == 3 == monitor_count(peers.PEERS["fastai"], tmp_path)
    names = {id(m): name for name, m in model.named_modules()}
    assert [names[id(m)] for m in flatten_model(model) if has_params(m)] == peers.leaves_with_parameters(model)


def test_torchlens_watches_the_modules_the_monitor_hooks(tmp_path):
    pytest.importorskip("torchlens")
    session, model = attached("torchlens", tmp_path)
    assert session.tool.ledger.computed_scalars > 0
    assert session.tensors == len(peers.monitor_modules(model)) == monitor_count(peers.PEERS["torchlens"], tmp_path)
    assert list(tmp_path.glob("torchlens-*/events.out.tfevents.*"))


def test_wandb_watch_in_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    before = dict(os.environ)
    session, _ = attached("wandb", tmp_path)
    assert session.tensors == 2 * TINY_PARAMS == monitor_count(peers.PEERS["wandb"], tmp_path)
    runs = list(tmp_path.glob("wandb-*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 1000
    assert dict(os.environ) == before


def test_cockpit_economy_in_its_own_training_step(tmp_path):
    pytest.importorskip("backpack")
    if peers.importlib.util.find_spec("cockpit") is None:
        pytest.skip("cockpit-for-pytorch is not installed")
    real = sys.modules.get("pkg_resources")
    session, model = attached("cockpit", tmp_path, steps=3)
    assert sys.modules.get("pkg_resources") is real  # no stand-in left behind
    output = session.tool.get_output()
    assert {"GradNorm", "Loss", "NormTest", "UpdateSize", "Alpha"} <= set(output[1])
    assert session.tensors >= TINY_PARAMS
    assert not any(hasattr(m, "_backpack_extend") for m in model.modules())
    assert monitor_count(peers.PEERS["cockpit"], tmp_path) == 3 * TINY_PARAMS


# -- the benchmark ----------------------------------------------------------------------------

@pytest.fixture
def small_batches(monkeypatch):
    """The benchmark's batch at 8 images of 8x8 pixels, so a run takes seconds."""
    monkeypatch.setattr(timing, "batch", functools.partial(timing.batch, size=8, image=8))


def test_a_missing_or_failing_peer_is_reported_and_its_counterpart_still_measured(tmp_path, monkeypatch,
                                                                                     small_batches):
    def failing(model, optimizer, workdir, counting):
        raise RuntimeError("no | way")

    monkeypatch.setitem(peers.MODELS, "tiny", ("Tiny", tiny))
    monkeypatch.setitem(peers.PEERS, "fastai", dataclasses.replace(peers.PEERS["fastai"],
                                                                 modules=("no_such_module_here",)))
    monkeypatch.setitem(peers.PEERS, "wandb", dataclasses.replace(peers.PEERS["wandb"], modules=("json",),
                                                                attach=failing))
    lines = []
    rows = peers.benchmark(["tiny"], [torch.device("cpu")], ["fastai", "wandb"], 1, tmp_path, lines.append)
    assert [(r.tool, r.peer_note, r.monitor_note) for r in rows] == [
        ("fastai ActivationStats", "not installed: pip install 'trainability-lab[bench]'", "not run"),
        ("wandb.watch", "failed: RuntimeError: no | way", None),
        ("Monitor, full set", None, None),
        ("Monitor, param_grad.norm", None, None),
    ]
    assert rows[0].monitor is None and all(r.peer is None for r in rows)
    # param_grad and weight; the full set (4 hooked modules: activation and its gradient; 6 parameters:
    # gradient, weight, update); param_grad.norm
    assert [r.monitor.tensors for r in rows[1:]] == [2 * TINY_PARAMS, 2 * 4 + 3 * TINY_PARAMS, TINY_PARAMS]
    assert all(r.monitor.ratio > 0 and len(r.monitor.quartiles) == 3 for r in rows[1:])
    assert len(lines) == 4


def test_an_end_to_end_run(tmp_path, small_batches, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "peers.md"
    args = parser().parse_args(["peers", "--models", "resnet8", "--steps", "1", "--peers", "tensorboard",
                                "--device", "cpu", "--out", str(out)])
    assert args.run(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out}"
    text = out.read_text()
    assert (f"Generated by `python -m analysis.bench peers --steps 1 --models resnet8 --device cpu --peers "
            f"tensorboard --out {out}` on ") in text
    assert f"torch {torch.__version__} with {torch.get_num_threads()} threads" in text
    assert f"{os.cpu_count()} CPUs" in text and "Load average " in text
    table = [cells(line) for line in text.splitlines() if line.startswith("| ")][2:]
    assert [(r[0], r[3], r[5], r[8]) for r in table] == [
        ("TensorBoard add_histogram", "46", "param_grad, weight", "46"),
        ("Monitor, full set", "", "all (stats=None)", "128"),
        ("Monitor, param_grad.norm", "", "param_grad.norm", "23"),
    ]
    assert all(float(r[6]) > 0 for r in table) and float(table[0][1]) > 0
    assert list(scratch.iterdir()) == []  # what the tools wrote went with the temporary folder
