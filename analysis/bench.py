"""Overhead of the hook Monitor on real training steps.

    python -m analysis.bench overhead [--out benchmarks/overhead.md] [--steps N] [--device cpu|cuda|auto]

For each model, an uninstrumented copy (A) and an instrumented copy (B) with the
same initial weights train side by side in one process, steps interleaved
A B B A A B ... so that load from other processes hits both alike. B first
carries a monitor that records no step, then a fresh one that records each
step; each phase gives the median ratio of a B step over the A step run next to
it. Then A and B swap roles and run the phases in the opposite order; the
geometric mean of both runs cancels speed differences between the copies
themselves. "every step" is the recorded ratio; at a cadence of `every` steps
the ratio is that of a whole cycle, ((every - 1) * unrecorded + recorded) / every.
Peak memory is measured in fresh child processes, one per side and cadence
(3 steps each): sampled peak anonymous RSS on the CPU,
`torch.cuda.max_memory_allocated` on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import resource
import statistics as stats
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from analysis.hooks import DEFAULT_EVERY, Monitor

BATCH = 64
IMAGE = 32


def _resnet56() -> nn.Module:
    from analysis.models import build_model

    return build_model(56)


def _resnet50() -> nn.Module:
    from analysis.models import build_model

    return build_model(50, stem="imagenet")


def _torchvision_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "resnet56": ("ResNet-56 (CIFAR, analysis.models)", _resnet56),
    "resnet50": ("ResNet-50 (ImageNet stem, analysis.models)", _resnet50),
    "tv-resnet18": ("resnet18 (torchvision, ReLU inplace)", _torchvision_resnet18),
}


@dataclass
class Result:
    model: str
    device: str
    cadence: str
    base_ms: float
    inst_ms: float
    memory_ratio: float

    @property
    def ratio(self) -> float:
        return self.inst_ms / self.base_ms


def _batch(device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    return x.to(device), y.to(device)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def measure_time(key: str, device: torch.device, steps: int, warmup: int = 2) -> tuple[float, float, float]:
    """Uninstrumented median step ms, and the ratios instrumented/uninstrumented of the
    median recorded and of the median unrecorded step.

    Two identical copies train in turn, steps interleaved. One copy is instrumented,
    first with a monitor that records no step, then with a fresh one that records
    every step; each phase gives the median ratio of an instrumented step over the
    uninstrumented step run next to it. Then the copies swap roles and run the phases in the opposite order; the
    geometric mean of the two runs cancels speed differences between the copies
    themselves (memory placement, which a recorded phase can shift).
    """
    torch.manual_seed(0)
    first = MODELS[key][1]().to(device)
    models = [first, copy.deepcopy(first)]
    optimizers = [_optimizer(m) for m in models]
    x, y = _batch(device)
    base_ms: list[float] = []
    ratios: dict[bool, list[float]] = {True: [], False: []}
    for inst, base, phases in ((1, 0, (False, True)), (0, 1, (True, False))):
        run_base = partial(_timed, partial(_train_step, models[base], optimizers[base], x, y), device)
        run_inst = partial(_timed, partial(_train_step, models[inst], optimizers[inst], x, y), device)
        for recorded in phases:
            times: tuple[list[float], list[float]] = ([], [])
            with tempfile.TemporaryDirectory() as tmp, Monitor(
                models[inst], optimizer=optimizers[inst], every=1 if recorded else [2**62],
                path=Path(tmp) / "stats",
            ):
                for i in range(warmup + steps):
                    if i % 4 < 2:
                        b, t = run_base(), run_inst()
                    else:
                        t, b = run_inst(), run_base()
                    if i >= warmup:
                        times[0].append(b)
                        times[1].append(t)
            ratios[recorded].append(stats.median(t / b for b, t in zip(*times)))
            base_ms += times[0]
    recorded_ratio, unrecorded_ratio = (math.sqrt(r[0] * r[1]) for r in (ratios[True], ratios[False]))
    return stats.median(base_ms), recorded_ratio, unrecorded_ratio


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


def measure_peak(key: str, device: torch.device, every: int | None, steps: int = 3) -> float:
    """Peak memory (bytes) of `steps` training steps in this process; every=None: no Monitor.

    CUDA: `torch.cuda.max_memory_allocated`; CPU: sampled peak anonymous RSS where
    /proc exists, else ru_maxrss.
    """
    torch.manual_seed(0)
    model = MODELS[key][1]().to(device)
    optimizer = _optimizer(model)
    x, y = _batch(device)
    sampler = _AnonymousPeak() if device.type == "cpu" and os.path.exists("/proc/self/statm") else None
    with tempfile.TemporaryDirectory() as tmp, sampler or contextlib.nullcontext():
        monitor = (Monitor(model, optimizer=optimizer, every=every, path=Path(tmp) / "stats")
                   if every is not None else contextlib.nullcontext())
        with monitor:
            for _ in range(steps):
                _train_step(model, optimizer, x, y)
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    if sampler is not None:
        return float(sampler.peak)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _peak_in_child(key: str, device: torch.device, every: int | None) -> float:
    command = [sys.executable, "-m", "analysis.bench", "peak", "--model", key, "--device", str(device)]
    if every is not None:
        command += ["--every", str(every)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def devices_named(name: str) -> list[torch.device]:
    """'auto': the CPU, and CUDA too when present."""
    if name == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but CUDA is not available; use cpu or auto")
    return [torch.device(name)]


def overhead(models: list[str], devices: list[torch.device], steps: int) -> list[Result]:
    """Time and peak-memory ratios for each model and device, at every step and at the
    default cadence: ((every - 1) * unrecorded ratio + recorded ratio) / every."""
    results = []
    for device in devices:
        for key in models:
            base_ms, recorded, unrecorded = measure_time(key, device, steps)
            base_peak = _peak_in_child(key, device, None)
            for every in (1, DEFAULT_EVERY):
                inst_ms = base_ms * ((every - 1) * unrecorded + recorded) / every
                cadence = "every step" if every == 1 else f"every={every} (default)"
                results.append(Result(MODELS[key][0], device.type, cadence, base_ms, inst_ms,
                                      _peak_in_child(key, device, every) / base_peak))
                print(f"{key:12s} {device.type:4s} {cadence:20s} {base_ms:9.1f} ms {inst_ms:9.1f} ms "
                      f"x{results[-1].ratio:.3f} mem x{results[-1].memory_ratio:.3f}", flush=True)
    return results


TARGETS = {"every step": 1.15, "default": 1.03}  # ResNet-56 on the 2-core CPU


def markdown(results: list[Result], steps: int, load: tuple[float, float]) -> str:
    """The results table with the conditions it was measured under and the targets."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    lines = [
        "# Monitor overhead",
        "",
        f"Generated by `python -m analysis.bench overhead --steps {steps}`: training steps (SGD with "
        f"momentum, cross-entropy) at batch {BATCH} on {IMAGE}x{IMAGE} inputs, the full statistic set.",
        "",
        "- Uninstrumented (A) and instrumented (B) steps alternate, A B B A ..., on identical model "
        "copies in one process. B carries a monitor that records no step, then a fresh one that "
        "records every step; each phase gives the median ratio of a B step over the A step next to "
        "it. The copies then swap roles and run the phases in the opposite order; the two ratios are "
        "averaged geometrically, which cancels speed differences between the copies themselves.",
        "- 'every step' is the recorded ratio. At a cadence of `every` steps the ratio is that of a "
        "whole cycle, ((every - 1) * unrecorded + recorded) / every; instrumented ms = ratio x the "
        "uninstrumented median.",
        "- Peak memory: whole-process peak anonymous RSS (sampled every 0.5 ms) on the CPU, "
        "`torch.cuda.max_memory_allocated` on CUDA; each side and cadence runs 3 steps (a recorded "
        "step included) in a fresh process.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads{gpu}. Load average {load[0]:.1f} before and {load[1]:.1f} "
        "after: the machine is shared with other work, so absolute times are noisy; interleaving keeps "
        "the ratios robust to that load, to a few percent.",
        "",
        "| model | device | cadence | uninstrumented ms | instrumented ms | ratio | peak memory ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r.model} | {r.device} | {r.cadence} | {r.base_ms:.1f} | {r.inst_ms:.1f} | "
                     f"{r.ratio:.3f} | {r.memory_ratio:.3f} |")
    checks = [(r, TARGETS["every step" if r.cadence == "every step" else "default"])
              for r in results if r.model == MODELS["resnet56"][0] and r.device == "cpu"]
    if checks:
        lines += ["", "Targets for ResNet-56 on the CPU:", ""]
        lines += [f"- {r.cadence}: at most {target:.2f}x; measured {r.ratio:.3f}x "
                  f"({'met' if r.ratio <= target else 'not met'})." for r, target in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("overhead", help="time and memory ratios, written as a markdown table")
    run.add_argument("--out", type=Path, default=Path("benchmarks/overhead.md"))
    run.add_argument("--steps", type=int, default=10,
                     help="measured steps per phase (recorded, unrecorded), role and model (default 10)")
    run.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    run.add_argument("--models", default=",".join(MODELS), help=f"comma-separated from {', '.join(MODELS)}")
    peak = commands.add_parser("peak", help="peak memory of a few steps in this process (JSON)")
    peak.add_argument("--model", choices=list(MODELS), required=True)
    peak.add_argument("--device", default="cpu")
    peak.add_argument("--every", type=int, default=None, help="instrument with this cadence")
    args = parser.parse_args(argv)
    if args.command == "peak":
        print(json.dumps({"peak": measure_peak(args.model, torch.device(args.device), args.every)}))
        return 0
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown or args.steps < 1:
        parser.error(f"--models must be from {', '.join(MODELS)} and --steps >= 1; "
                     f"got {args.models!r}, {args.steps}")
    load_before = os.getloadavg()[0]
    results = overhead(models, devices_named(args.device), args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, args.steps, (load_before, os.getloadavg()[0])))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
