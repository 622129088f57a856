"""Overhead of the hook Monitor on real training steps, per statistic set.

    python -m analysis.bench overhead [--out benchmarks/overhead.md] [--steps N] [--device cpu|cuda|auto]

Time ratios come from `timing.compare` (interleaved steps of identical model
copies, roles swapped). For each model: a monitor that records no step, then
one that records every step with each statistic set (the full set, the
activation group, activation mean and std, parameter-gradient norms). "every
step" is the recorded ratio; at a cadence of `every` steps the ratio is that of a
whole cycle, ((every - 1) * unrecorded + recorded) / every. Peak memory is
measured in fresh child processes (3 steps each): sampled peak anonymous RSS on
the CPU, `torch.cuda.max_memory_allocated` on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis.bench.models import MODELS
from analysis.bench.options import device_option, devices_for, image_option, models_option, steps_option
from analysis.bench.timing import IMAGE, BATCH, batch, compare, copies, optimizer_for, quartiles, train_step
from analysis.hooks import DEFAULT_EVERY, Monitor

STAT_SETS: dict[str, dict[str, Any]] = {
    "full set": {"stats": None},
    "full set, stock ops (one_pass=False)": {"stats": None, "one_pass": False},
    "activation group": {"stats": ["activation"]},
    "activation mean+std": {"stats": ["activation.mean", "activation.std"]},
    "param_grad.norm": {"stats": ["param_grad.norm"]},
}
"""Label -> the monitor's options (`stats=`, and `one_pass=` where not the default) for each measured set."""

DEFAULT_CADENCE = f"full set, every={DEFAULT_EVERY} (default)"
UNRECORDED = "attached, step not recorded"

TARGETS: dict[str, dict[str, float]] = {
    "cpu": {"full set": 1.15, "param_grad.norm": 1.03, "activation mean+std": 1.08, DEFAULT_CADENCE: 1.02},
    "cuda": {"full set": 2.0, DEFAULT_CADENCE: 1.03},
}
"""Device -> row label -> the largest acceptable ratio (every step unless the label says otherwise)."""


@dataclass
class Result:
    model: str
    device: str
    label: str
    base_ms: float
    ratio: float
    spread: tuple[float, float] | None  # first and third quartile of per-pair ratios
    memory_ratio: float | None = None

    @property
    def inst_ms(self) -> float:
        return self.base_ms * self.ratio


@contextlib.contextmanager
def monitored(model: nn.Module, optimizer: torch.optim.Optimizer, *, stats: list[str] | None,
              recorded: bool, one_pass: bool = True) -> Iterable[Monitor]:
    """A monitor writing into a temporary folder, recording every step or none."""
    with tempfile.TemporaryDirectory() as tmp, Monitor(
        model, optimizer=optimizer, every=1 if recorded else [2**62], stats=stats, path=Path(tmp) / "stats",
        one_pass=one_pass,
    ) as monitor:
        yield monitor


class _AnonymousPeak:
    """Samples this process's anonymous resident memory (resident - file-backed pages of
    /proc/self/statm) every half millisecond; unlike ru_maxrss, that ignores shared
    library pages, which the kernel may reclaim and fault back in at any time."""

    def __init__(self) -> None:
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as statm:
            while not self._done.is_set():
                statm.seek(0)
                _, resident, shared = (int(v) for v in statm.read().split()[:3])
                self.peak = max(self.peak, (resident - shared) * page)
                time.sleep(0.0005)

    def __enter__(self) -> _AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()


def measure_peak(key: str, device: torch.device, every: int | None, image: int = IMAGE, steps: int = 3) -> float:
    """Peak memory (bytes) of `steps` training steps in this process; every=None: no Monitor.

    CUDA: `torch.cuda.max_memory_allocated`; CPU: sampled peak anonymous RSS where
    /proc exists, else ru_maxrss.
    """
    torch.manual_seed(0)
    model = MODELS[key][1]().to(device)
    optimizer = optimizer_for(model)
    x, y = batch(device, image=image)
    sampler = _AnonymousPeak() if device.type == "cpu" and os.path.exists("/proc/self/statm") else None
    with tempfile.TemporaryDirectory() as tmp, sampler or contextlib.nullcontext():
        monitor = (Monitor(model, optimizer=optimizer, every=every, path=Path(tmp) / "stats")
                   if every is not None else contextlib.nullcontext())
        with monitor:
            for _ in range(steps):
                train_step(model, optimizer, x, y)
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    if sampler is not None:
        return float(sampler.peak)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _peak_in_child(key: str, device: torch.device, every: int | None, image: int) -> float:
    command = [sys.executable, "-m", "analysis.bench", "peak", "--model", key, "--device", str(device),
               "--image", str(image)]
    if every is not None:
        command += ["--every", str(every)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def overhead(models: list[str], devices: list[torch.device], steps: int, image: int = IMAGE,
             memory: bool = True) -> list[Result]:
    """Time ratios of each statistic set recorded every step, of the default cadence, and
    (with `memory`) peak-memory ratios of the full set every step and at the default cadence."""
    results = []
    for device in devices:
        inputs = batch(device, image=image)
        for key in models:
            name = MODELS[key][0]
            pair = copies(MODELS[key][1], device)
            # the unrecorded ratio weighs (every - 1) / every in the default cadence: measured over 3x the steps
            unrecorded = compare(pair, partial(monitored, stats=None, recorded=False), device, 3 * steps,
                                 inputs=inputs)
            results.append(Result(name, device.type, UNRECORDED, unrecorded.base_median, unrecorded.ratio,
                                  quartiles(unrecorded.ratios)[::2]))
            _report(key, results[-1])
            base_peak = _peak_in_child(key, device, None, image) if memory else None
            for label, options in STAT_SETS.items():
                timing = compare(pair, partial(monitored, recorded=True, **options), device, steps,
                                 inputs=inputs)
                q1, _, q3 = quartiles(timing.ratios)
                results.append(Result(name, device.type, label, unrecorded.base_median, timing.ratio, (q1, q3)))
                if label == "full set":
                    full = results[-1]
                    if memory:
                        full.memory_ratio = _peak_in_child(key, device, 1, image) / base_peak
                _report(key, results[-1])
            every = DEFAULT_EVERY
            results.append(Result(name, device.type, DEFAULT_CADENCE, unrecorded.base_median,
                                  ((every - 1) * unrecorded.ratio + full.ratio) / every, None,
                                  _peak_in_child(key, device, every, image) / base_peak if memory else None))
            _report(key, results[-1])
    return results


@dataclass
class Compiled:
    """A model under `torch.compile`: Dynamo graph breaks and graphs with and without the monitor, and the
    step-time ratio of the compiled monitored model (full set, every step) over the compiled plain one."""

    model: str
    device: str
    breaks: int
    monitored_breaks: int
    graphs: int
    monitored_graphs: int
    result: Result | None


def graph_breaks(key: str, device: torch.device, monitored: bool, image: int = IMAGE) -> tuple[int, int]:
    """(graph breaks, distinct graphs) of 4 compiled training steps (Dynamo only: backend "eager"),
    with a monitor recording every other step or without one."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = copies(MODELS[key][1], device)[0]
    optimizer = optimizer_for(model)
    run = torch.compile(model, backend="eager")
    x, y = batch(device, image=image)
    with tempfile.TemporaryDirectory() as tmp, Monitor(
            model, optimizer=optimizer, every=2, path=Path(tmp) / "stats") if monitored else contextlib.nullcontext():
        for _ in range(4):
            train_step(run, optimizer, x, y)
    found = sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return found


def compiled(key: str, device: torch.device, steps: int, image: int = IMAGE) -> Compiled:
    """Graph breaks, and the ratio of compiled (inductor) steps with the full set recorded every step over
    compiled plain steps: one role only, the monitor attached before the first compiled call."""
    name = MODELS[key][0]
    breaks, graphs = graph_breaks(key, device, False, image)
    monitored_breaks, monitored_graphs = graph_breaks(key, device, True, image)
    pair = tuple(torch.compile(m) for m in copies(MODELS[key][1], device))
    timing = compare(pair, partial(monitored, stats=None, recorded=True), device, steps, warmup=3,
                     inputs=batch(device, image=image), swap=False)
    torch._dynamo.reset()
    q1, _, q3 = quartiles(timing.ratios)
    result = Result(name, device.type, "full set, compiled", timing.base_median, timing.ratio, (q1, q3))
    _report(key, result)
    return Compiled(name, device.type, breaks, monitored_breaks, graphs, monitored_graphs, result)


def _report(key: str, r: Result) -> None:
    print(f"{key:12s} {r.device:4s} {r.label:34s} {r.base_ms:8.1f} ms x{r.ratio:.3f}", flush=True)


def _cell(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def where_the_time_goes(results: list[Result]) -> list[str]:
    """Per model and device, the extra ms of a recorded full-set step split into the activation group and
    the rest (output gradients, blocks, parameters, updates), from the measured ratios."""
    by_key: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        by_key.setdefault((r.model, r.device), {})[r.label] = r
    lines = []
    for (model, device), rows in by_key.items():
        if "full set" not in rows or "activation group" not in rows:
            continue
        full, activation = rows["full set"], rows["activation group"]
        extra = full.inst_ms - full.base_ms
        part = activation.inst_ms - activation.base_ms
        if extra > 0:
            lines.append(f"- {model}, {device}: a recorded full-set step adds {extra:.1f} ms; the activation group "
                         f"alone adds {part:.1f} ms ({100 * part / extra:.0f}%), output gradients, blocks and "
                         f"parameter statistics the other {extra - part:.1f} ms.")
    if lines:
        lines = ["", "Where the time goes (from the ratios above):", ""] + lines
    return lines


def markdown(results: list[Result], steps: int, image: int, load: tuple[float, float],
             compiled_rows: list[Compiled] = ()) -> str:
    """The results table with the conditions it was measured under and the targets."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    lines = [
        "# Monitor overhead",
        "",
        f"Generated by `python -m analysis.bench overhead --steps {steps} --image {image}`: training steps "
        f"(SGD with momentum, cross-entropy) at batch {BATCH} on {image}x{image} inputs.",
        "",
        "- Uninstrumented (A) and instrumented (B) steps alternate, A B B A ..., on identical model "
        "copies in one process; each pair gives the ratio of the B step over the A step next to it. The "
        "copies then swap roles; 'ratio' is the geometric mean over both roles of the median per-pair "
        f"ratio, 'quartiles' those of all per-pair ratios ({steps} pairs per role).",
        "- Each statistic set is recorded every step (`every=1`, `stats=` as labelled). At a cadence of "
        "`every` steps the ratio is that of a whole cycle, ((every - 1) * unrecorded + recorded) / every, "
        "with the unrecorded ratio measured with a monitor attached that records no step.",
        "- The monitor reads each big module output once, in a kernel compiled by `torch.compile` "
        "(`one_pass=True`, the default; compiled during warm-up); the 'stock ops' row is the same full set "
        "with one stock operation per reduction.",
        "- Peak memory: whole-process peak anonymous RSS (sampled every 0.5 ms) on the CPU, "
        "`torch.cuda.max_memory_allocated` on CUDA; each side runs 3 steps (a recorded step included) "
        "in a fresh process.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads{gpu}. Load average {load[0]:.1f} before and {load[1]:.1f} "
        "after: absolute times are noisy on a shared machine; interleaving keeps the ratios robust to "
        "that load, to a few percent.",
        "",
        "| model | device | statistics | uninstrumented ms | instrumented ms | ratio | quartiles | "
        "peak memory ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        spread = f"{r.spread[0]:.3f}-{r.spread[1]:.3f}" if r.spread else ""
        lines.append(f"| {r.model} | {r.device} | {r.label} | {r.base_ms:.1f} | {r.inst_ms:.1f} | "
                     f"{r.ratio:.3f} | {spread} | {_cell(r.memory_ratio)} |")
    if compiled_rows:
        lines += [
            "", "## Under torch.compile", "",
            "Graph breaks and distinct graphs over 4 training steps compiled by Dynamo alone (backend "
            "\"eager\"), without a monitor and with one recording every other step; then the step-time ratio of "
            "the compiled (inductor) model with the full set recorded every step over the compiled model without "
            "a monitor. Both copies compile during 3 warm-up steps; one role only (the monitor is attached "
            "before the first compiled call), so copy differences are not cancelled.", "",
            "| model | device | graph breaks without / with monitor | graphs without / with monitor | "
            "compiled ms | ratio | quartiles |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in compiled_rows:
            r = c.result
            lines.append(f"| {c.model} | {c.device} | {c.breaks} / {c.monitored_breaks} | {c.graphs} / "
                         f"{c.monitored_graphs} | {r.base_ms:.1f} | {r.ratio:.3f} | {r.spread[0]:.3f}-{r.spread[1]:.3f} |")
    lines += where_the_time_goes(results)
    checks = [(r, TARGETS[r.device][r.label]) for r in results if r.label in TARGETS.get(r.device, {})]
    if checks:
        lines += ["", "Targets (every step unless the row says otherwise):", ""]
        lines += [f"- {r.model}, {r.device}, {r.label}: at most {target:.2f}x; measured {r.ratio:.3f}x "
                  f"({'met' if r.ratio <= target else f'missed by {r.ratio - target:.3f}'})."
                  for r, target in checks]
    return "\n".join(lines) + "\n"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `overhead` and `peak` subcommands."""
    run_parser = commands.add_parser("overhead", help="time and memory ratios, written as a markdown table")
    run_parser.add_argument("--out", type=Path, default=Path("benchmarks/overhead.md"))
    run_parser.add_argument("--steps", type=steps_option, default=10,
                            help="measured step pairs per role and statistic set (default 10)")
    run_parser.add_argument("--device", type=device_option, default="auto",
                            help="cpu, cuda or auto (the CPU, plus CUDA when available; default)")
    run_parser.add_argument("--image", type=image_option, default=IMAGE, help="input height and width (default 32)")
    run_parser.add_argument("--models", type=models_option, default="resnet56,resnet50,tv-resnet18",
                            help=f"comma-separated from {', '.join(MODELS)}")
    run_parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak memory")
    run_parser.add_argument("--compiled", type=models_option, default=["resnet56"],
                            help="models also measured under torch.compile (default resnet56)")
    run_parser.add_argument("--no-compiled", dest="compiled", action="store_const", const=[],
                            help="measure no model under torch.compile")
    run_parser.set_defaults(run=run)
    peak = commands.add_parser("peak", help="peak memory of a few steps in this process (JSON)")
    peak.add_argument("--model", choices=list(MODELS), required=True)
    peak.add_argument("--device", default="cpu")
    peak.add_argument("--image", type=int, default=IMAGE)
    peak.add_argument("--every", type=int, default=None, help="instrument with this cadence")
    peak.set_defaults(run=run_peak)


def run_peak(args: argparse.Namespace) -> int:
    print(json.dumps({"peak": measure_peak(args.model, torch.device(args.device), args.every, args.image)}))
    return 0


def run(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()[0]
    devices = devices_for(args.device)
    results = overhead(args.models, devices, args.steps, args.image, args.memory)
    compiled_rows = [compiled(key, device, args.steps, args.image) for device in devices for key in args.compiled]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, args.steps, args.image, (load_before, os.getloadavg()[0]), compiled_rows))
    print(f"wrote {args.out}")
    return 0
