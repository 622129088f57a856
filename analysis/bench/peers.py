"""The hook Monitor against peer tools: the same training step, the same statistics, side by side.

    python -m analysis.bench peers [--out benchmarks/peers.md] [--steps N] [--models resnet56,tv-resnet18]
                                   [--device cpu|cuda|auto] [--peers fastai,torchlens,wandb,tensorboard,cockpit]

Each peer is an instrument: it attaches the tool to a model and its optimizer for a
`with` block and removes it on exit. For each device, model and peer,
`timing.compare` times the peer on one pair of identical model copies and a Monitor
recording the same statistics (every step, Parquet into a temporary folder) on a
fresh pair. One more step per tool, on a copy of its own, counts the tensors the
tool reduces per step. A peer whose package is missing is reported with the pip
command that installs it; one that fails is reported with its error.

The peers come with the `bench` extra (`make bench-peers` installs it without
replacing torch).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import itertools
import os
import platform
import statistics as stats
import sys
import tempfile
import traceback
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from analysis.bench import timing
from analysis.bench.models import MODELS
from analysis.bench.options import device_option, devices_for, keys, models_option, steps_option
from analysis.extras import install_command
from analysis.hooks import Monitor, select

DEFAULT_MODELS = "resnet56,tv-resnet18"
COUNT_BATCH = 8
"""Batch size of the step that counts tensors (the count does not depend on it)."""


@dataclass
class Session:
    """What an attached tool exposes: the tensors it reduced in the last step (tracked when attached
    with counting=True, and where tracking costs nothing) and the tool's own object, to inspect."""

    tensors: int | None = None
    tool: Any = None


Attach = Callable[[nn.Module, torch.optim.Optimizer, Path, bool], ContextManager[Session]]
"""(model, optimizer, workdir, counting) -> context manager yielding a Session."""


@dataclass(frozen=True)
class Peer:
    key: str
    name: str
    records: str
    distributions: tuple[str, ...]
    """Distributions the peer needs, pinned in the `bench` extra."""
    modules: tuple[str, ...]
    """Import names that must be found for the peer to count as installed."""
    stats: tuple[str, ...]
    """The Monitor's counterpart statistics."""
    attach: Attach
    include: Callable[[nn.Module], list[str]] | None = None
    """Modules the Monitor counterpart hooks (qualified names); None: the Monitor's default selection."""
    tensors: str = ""
    """How the tensors per step are counted."""

    @staticmethod
    def install_command() -> str:
        return install_command("bench")

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


# -- the training step ---------------------------------------------------------------

_STEPS: weakref.WeakKeyDictionary[nn.Module, Callable] = weakref.WeakKeyDictionary()
"""Models whose attached tool trains with its own step (Cockpit); every other model uses timing.train_step."""


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step: the attached tool's own form where it needs one, else `timing.train_step`."""
    _STEPS.get(model, timing.train_step)(model, optimizer, x, y)


# -- module selections -----------------------------------------------------------------

def leaves_with_parameters(model: nn.Module) -> list[str]:
    """Qualified names of the leaf modules that own parameters: what fastai's HookCallback hooks
    by default (`flatten_model` filtered by `has_params`)."""
    return [name for name, m in model.named_modules()
            if not any(True for _ in m.children()) and any(True for _ in m.parameters())]


def monitor_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules the Monitor hooks by default."""
    return [name for name, _ in select(model).modules]


# -- peers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _fastai(model: nn.Module, optimizer: torch.optim.Optimizer, workdir: Path, counting: bool) -> Iterator[Session]:
    """fastai's ActivationStats callback without a Learner: the callback's own before_fit registers its
    hooks, an optimizer post-hook plays the Learner's after_batch, after_fit removes the hooks."""
    from fastai.callback.hook import ActivationStats

    callback = ActivationStats(with_hist=True)
    session = Session(tool=callback)
    learner = types.SimpleNamespace(model=model, training=True, train_iter=0)
    callback.learn = learner

    def after_batch(opt: Any, args: Any, kwargs: Any) -> None:
        callback.after_batch()
        learner.train_iter += 1

    handles = []
    try:
        callback.before_fit()
        handles.append(optimizer.register_step_post_hook(after_batch))
        if counting:
            calls = {"n": 0}

            def count(module: nn.Module, args: Any, output: Any) -> None:
                calls["n"] += 1

            def settle(opt: Any, args: Any, kwargs: Any) -> None:
                session.tensors, calls["n"] = calls["n"], 0

            handles += [m.register_forward_hook(count) for m in callback.modules]
            handles.append(optimizer.register_step_post_hook(settle))
        yield session
    finally:
        for handle in handles:
            handle.remove()
        callback.after_fit()
        callback.learn = None


@contextlib.contextmanager
def _torchlens(model: nn.Module, optimizer: torch.optim.Optimizer, workdir: Path, counting: bool
               ) -> Iterator[Session]:
    """torchlens.trackers.watch on the module outputs the Monitor hooks by default, every step,
    into its reference TensorBoardSink."""
    from torchlens import trackers

    session = Session()
    sink = trackers.TensorBoardSink(tempfile.mkdtemp(prefix="torchlens-", dir=workdir))
    memory = trackers.MemorySink() if counting else None
    current = {"step": 0}
    x, _ = timing.batch(next(model.parameters()).device, size=2)
    watch = trackers.watch(model, to=(sink, memory) if memory else sink, signals=("activations",),
                           select=monitor_modules(model), example_input=x, optimizer=optimizer,
                           step=lambda: current["step"], every=1)

    def advance(opt: Any, args: Any, kwargs: Any) -> None:
        if memory is not None:
            done = current["step"]
            session.tensors = len({p.tag.split("/", 2)[2] for p in memory.scalars
                                   if p.step == done and p.tag.startswith("activations/")})
        current["step"] += 1

    session.tool = watch
    handle = optimizer.register_step_post_hook(advance)
    try:
        yield session
    finally:
        handle.remove()
        watch.close()


@contextlib.contextmanager
def _wandb(model: nn.Module, optimizer: torch.optim.Optimizer, workdir: Path, counting: bool) -> Iterator[Session]:
    """wandb.watch(log="all", log_freq=1) in an offline run; each step ends with run.log, as a
    training loop that logs to wandb does, which commits the step's histograms. Everything wandb
    writes goes under `workdir`; its environment variables are restored on exit."""
    session = Session()
    folder = Path(tempfile.mkdtemp(prefix="wandb-", dir=workdir))
    settings = {"WANDB_SILENT": "true", "WANDB_MODE": "offline", "WANDB_DIR": str(folder),
                "WANDB_CONFIG_DIR": str(folder / "config"), "WANDB_CACHE_DIR": str(folder / "cache"),
                "WANDB_DATA_DIR": str(folder / "data")}
    saved = {name: os.environ.get(name) for name in [*settings, "WANDB_SERVICE"]}
    os.environ.update(settings)
    run = None
    handles = []
    try:
        import wandb

        run = wandb.init(mode="offline", dir=str(folder), project="trainability-lab-bench",
                         settings=wandb.Settings(console="off"))
        wandb.watch(model, log="all", log_freq=1)
        session.tool = run
        steps = itertools.count()
        counted = {"n": 0}

        def commit(opt: Any, args: Any, kwargs: Any) -> None:
            run.log({"step": next(steps)})
            if counting:
                session.tensors, counted["n"] = counted["n"], 0

        if counting:
            log_tensor_stats = run._torch.log_tensor_stats

            def counting_stats(tensor: Any, name: str) -> None:
                counted["n"] += 1
                log_tensor_stats(tensor, name)

            run._torch.log_tensor_stats = counting_stats
        handles.append(optimizer.register_step_post_hook(commit))
        yield session
    finally:
        for handle in handles:
            handle.remove()
        try:
            if run is not None:
                import wandb

                with contextlib.suppress(Exception):
                    del run._torch.log_tensor_stats
                wandb.unwatch(model)
                run.finish()
                wandb.teardown()  # ends the service process the run started
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextlib.contextmanager
def _tensorboard(model: nn.Module, optimizer: torch.optim.Optimizer, workdir: Path, counting: bool
                 ) -> Iterator[Session]:
    """SummaryWriter.add_histogram of every parameter and every gradient after each optimizer step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=tempfile.mkdtemp(prefix="tensorboard-", dir=workdir))
    session = Session(tool=writer)
    named = list(model.named_parameters())
    steps = itertools.count()

    def log(opt: Any, args: Any, kwargs: Any) -> None:
        n, count = next(steps), 0
        for name, p in named:
            writer.add_histogram(f"parameters/{name}", p, n)
            count += 1
            if p.grad is not None:
                writer.add_histogram(f"gradients/{name}", p.grad, n)
                count += 1
        session.tensors = count

    handle = optimizer.register_step_post_hook(log)
    try:
        yield session
    finally:
        handle.remove()
        writer.close()


def import_cockpit() -> types.ModuleType:
    """Import cockpit. Cockpit 1.0.2 reads its own version through `pkg_resources` when imported (and uses
    it nowhere else), which setuptools >= 81 no longer ships: then a stand-in that answers that one call
    from importlib.metadata is present only for the import."""
    try:
        return importlib.import_module("cockpit")
    except ModuleNotFoundError as error:
        if error.name != "pkg_resources":
            raise
    for name in [n for n in sys.modules if n == "cockpit" or n.startswith("cockpit.")]:
        del sys.modules[name]
    stand_in = types.ModuleType("pkg_resources")

    class DistributionNotFound(Exception):
        pass

    def get_distribution(name: str) -> types.SimpleNamespace:
        try:
            return types.SimpleNamespace(version=importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError as missing:
            raise DistributionNotFound(name) from missing

    stand_in.DistributionNotFound, stand_in.get_distribution = DistributionNotFound, get_distribution
    sys.modules["pkg_resources"] = stand_in
    try:
        return importlib.import_module("cockpit")
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


@contextlib.contextmanager
def _cockpit(model: nn.Module, optimizer: torch.optim.Optimizer, workdir: Path, counting: bool) -> Iterator[Session]:
    """Cockpit's "economy" configuration in its documented training step: BackPACK-extended model and
    loss, individual losses (reduction="none") handed in, backward inside `with cockpit(step, info=...)`."""
    cockpit = import_cockpit()
    import backpack
    from backpack.context import CTX
    from cockpit.context import CockpitCTX
    from cockpit.utils.configuration import configuration

    session = Session()
    before = {id(h) for h in CTX.hook_handles}
    loss_function = nn.CrossEntropyLoss(reduction="mean")
    extended = list(model.modules()) + [loss_function]
    state = {"step": 0}
    try:
        backpack.extend(model)
        backpack.extend(loss_function)
        cp = cockpit.Cockpit(model.parameters(), quantities=configuration("economy"))
        session.tool = cp
        if counting:
            free = cp._free_backpack_buffers

            def counting_free(global_step: int, protected: Any, verbose: bool = False) -> None:
                fields = [e.savefield for e in cp._get_extensions(global_step)]
                count = 0
                for p in cp.params:
                    count += sum(hasattr(p, f) for f in fields)
                    transforms = getattr(p, "grad_batch_transforms", None) or {}
                    count += sum(value is not None for value in transforms.values())
                session.tensors = count
                free(global_step, protected, verbose)

            cp._free_backpack_buffers = counting_free

        def cockpit_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                         y: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            outputs = model(x)
            loss = loss_function(outputs, y)
            losses = F.cross_entropy(outputs, y, reduction="none")
            n = state["step"]
            with cp(n, info={"batch_size": x.shape[0], "individual_losses": losses, "loss": loss,
                             "optimizer": optimizer}):
                loss.backward(create_graph=cp.create_graph(n))
            optimizer.step()
            state["step"] += 1

        _STEPS[model] = cockpit_step
        yield session
    finally:
        _STEPS.pop(model, None)
        ours = [h for h in CTX.hook_handles if id(h) not in before]
        for handle in ours:
            handle.remove()
        CTX.hook_handles = [h for h in CTX.hook_handles if id(h) in before]
        for module in extended:
            if getattr(module, "_backpack_extend", False):
                del module._backpack_extend
            backpack.memory_cleanup(module)
        for p in model.parameters():
            for name in ("grad_batch", "grad_batch_transforms"):
                if hasattr(p, name):
                    delattr(p, name)
        CockpitCTX.erase()


ACTIVATION_TRIPLE = ("activation.mean", "activation.std", "activation.zero_fraction")
PARAMS = ("param_grad", "weight")

PEERS: dict[str, Peer] = {
    "fastai": Peer(
        "fastai", "fastai ActivationStats",
        "`ActivationStats(with_hist=True)` (fastai.callback.hook): mean, std, near-zero fraction and a 40-bin "
        "histogram of the output of each leaf module with parameters, moved to the CPU per module; hooks "
        "driven without a Learner (its before_fit, after_batch, after_fit)",
        ("fastai",), ("fastai",), ACTIVATION_TRIPLE, _fastai, include=leaves_with_parameters,
        tensors="calls of the hooked modules"),
    "torchlens": Peer(
        "torchlens", "torchlens trackers.watch",
        "`torchlens.trackers.watch(signals=('activations',), every=1)` into a `TensorBoardSink`: count, mean, "
        "std, norm, min, max and zero fraction of each output of the modules the Monitor hooks by default",
        ("torchlens",), ("torchlens",), ("activation",), _torchlens,
        tensors="modules with activation points at the step"),
    "wandb": Peer(
        "wandb", "wandb.watch",
        "`wandb.watch(model, log='all', log_freq=1)` in an offline run (`wandb.init(mode='offline')`, "
        "`run.log` after each step): a 64-bin histogram of every parameter and every gradient",
        ("wandb",), ("wandb",), PARAMS, _wandb,
        tensors="histograms logged"),
    "tensorboard": Peer(
        "tensorboard", "TensorBoard add_histogram",
        "`SummaryWriter.add_histogram` of every parameter and every gradient after each optimizer step "
        "(torch.utils.tensorboard)",
        ("tensorboard",), ("tensorboard",), PARAMS, _tensorboard,
        tensors="histograms written"),
    "cockpit": Peer(
        "cockpit", "Cockpit economy",
        "Cockpit's 'economy' configuration (alpha, distance, 1-d gradient histogram, gradient norm, inner "
        "product, norm and orthogonality tests, loss, update size), per-sample gradients through BackPACK, "
        "in its documented training step",
        ("cockpit-for-pytorch", "backpack-for-pytorch"), ("cockpit", "backpack"),
        ("param_grad.norm", "update.ratio", "weight.norm"), _cockpit,
        tensors="per-parameter BackPACK results at the end of backward"),
}
"""Option key -> peer, in table order."""

MONITOR_ONLY = (("Monitor, full set", None), ("Monitor, param_grad.norm", ("param_grad.norm",)))


def monitor_instrument(stats: tuple[str, ...] | None, include: Callable[[nn.Module], list[str]] | None,
                       workdir: Path) -> timing.Instrument:
    """A Monitor recording `stats` every step into a fresh folder under `workdir`."""

    def instrument(model: nn.Module, optimizer: torch.optim.Optimizer) -> Monitor:
        return Monitor(model, optimizer=optimizer, every=1, stats=stats,
                       include=include(model) if include is not None else None,
                       path=tempfile.mkdtemp(prefix="monitor-", dir=workdir))

    return instrument


def monitor_tensors(frame: Any) -> int:
    """Tensors a Monitor reduced in the first recorded step of `frame`: one per output, gradient,
    parameter or block and statistic group (global rows are derived from the others)."""
    first = frame[(frame["step"] == frame["step"].min()) & (frame["kind"] != "global")]
    keys = first[["kind", "module", "call", "param"]].astype(str)
    return len(keys.drop_duplicates())


def stats_label(stats: tuple[str, ...] | None) -> str:
    return "all (stats=None)" if stats is None else ", ".join(stats)


# -- measurement -------------------------------------------------------------------------

@dataclass
class Measure:
    """One tool on one model: the comparison's ratio and quartiles, and its tensors per step."""

    ratio: float
    quartiles: tuple[float, float, float]
    base_ms: float
    tensors: int | None

    @property
    def ms_per_tensor(self) -> float | None:
        """(instrumented - uninstrumented median ms) / tensors, instrumented ms = ratio x uninstrumented."""
        if not self.tensors:
            return None
        return (self.ratio - 1) * self.base_ms / self.tensors


@dataclass
class Row:
    device: str
    model: str
    tool: str
    stats: str
    peer: Measure | None = None
    peer_note: str | None = None
    monitor: Measure | None = None
    monitor_note: str | None = None


@dataclass
class Report:
    rows: list[Row]
    command: str
    steps: int
    load: tuple[float, float]
    versions: dict[str, str]
    machine: str
    peers: list[str] = field(default_factory=lambda: list(PEERS))


def error_note(error: BaseException, limit: int = 240) -> str:
    """`failed: Type: first line of the message`, cut to `limit` characters."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"failed: {type(error).__name__}" + (f": {message}" if message else "")
    return text if len(text) <= limit else text[:limit - 1] + "…"


@contextlib.contextmanager
def _torch_settings() -> Iterator[None]:
    """Restore torch's thread count and cuDNN autotuning after a tool that may change them."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def measure(instrument: timing.Instrument, count: Callable[[nn.Module, torch.optim.Optimizer], int],
            build: Callable[[], nn.Module], device: torch.device, steps: int,
            inputs: tuple[torch.Tensor, torch.Tensor]) -> Measure:
    """Count the tensors of one step on a copy of its own, then time the instrument with timing.compare."""
    torch.manual_seed(0)
    model = build().to(device)
    tensors = count(model, timing.optimizer_for(model))
    del model
    comparison = timing.compare(timing.copies(build, device), instrument, device, steps, step=step,
                                inputs=inputs)
    return Measure(comparison.ratio, timing.quartiles(comparison.ratios), comparison.base_median, tensors)


def _count_peer(peer: Peer, workdir: Path, inputs: tuple[torch.Tensor, torch.Tensor]
                ) -> Callable[[nn.Module, torch.optim.Optimizer], int]:
    def count(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        x, y = inputs[0][:COUNT_BATCH], inputs[1][:COUNT_BATCH]
        with peer.attach(model, optimizer, workdir, True) as session:
            step(model, optimizer, x, y)
        if session.tensors is None:
            raise RuntimeError(f"{peer.name} counted no tensor")
        return session.tensors

    return count


def _count_monitor(instrument: timing.Instrument, inputs: tuple[torch.Tensor, torch.Tensor]
                   ) -> Callable[[nn.Module, torch.optim.Optimizer], int]:
    def count(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        with instrument(model, optimizer) as monitor:
            step(model, optimizer, inputs[0][:COUNT_BATCH], inputs[1][:COUNT_BATCH])
        return monitor_tensors(monitor.frame())

    return count


def benchmark(keys: list[str], devices: list[torch.device], peers: list[str], steps: int,
              workdir: Path, log: Callable[[str], None] = print) -> list[Row]:
    """Every row of the tables: each peer and its Monitor counterpart, then the Monitor-only rows."""
    rows = []
    for device in devices:
        inputs = timing.batch(device)
        for key in keys:
            model_name, build = MODELS[key]
            for peer in (PEERS[p] for p in peers):
                row = Row(device.type, model_name, peer.name, stats_label(peer.stats))
                if not peer.installed():
                    row.peer_note = f"not installed: {peer.install_command()}"
                    row.monitor_note = "not run"
                    rows.append(row)
                    log(f"{device.type:4s} {key:12s} {peer.name}: {row.peer_note}")
                    continue

                def instrument(model: nn.Module, optimizer: torch.optim.Optimizer, peer: Peer = peer
                               ) -> ContextManager:
                    return peer.attach(model, optimizer, workdir, False)

                with _torch_settings():
                    try:
                        row.peer = measure(instrument, _count_peer(peer, workdir, inputs), build, device, steps,
                                           inputs)
                    except Exception as error:  # reported in the table
                        row.peer_note = error_note(error)
                        traceback.print_exc(limit=-3, file=sys.stderr)
                    finally:
                        gc.collect()
                row.monitor = _measure_monitor(peer.stats, peer.include, build, device, steps, inputs, workdir)
                rows.append(row)
                log(_progress(row, key))
            for tool, monitor_stats in MONITOR_ONLY:
                row = Row(device.type, model_name, tool, stats_label(monitor_stats))
                row.monitor = _measure_monitor(monitor_stats, None, build, device, steps, inputs, workdir)
                rows.append(row)
                log(_progress(row, key))
    return rows


def _measure_monitor(monitor_stats: tuple[str, ...] | None, include: Callable[[nn.Module], list[str]] | None,
                     build: Callable[[], nn.Module], device: torch.device, steps: int,
                     inputs: tuple[torch.Tensor, torch.Tensor], workdir: Path) -> Measure:
    instrument = monitor_instrument(monitor_stats, include, workdir)
    try:
        return measure(instrument, _count_monitor(instrument, inputs), build, device, steps, inputs)
    finally:
        gc.collect()


def _progress(row: Row, key: str) -> str:
    def part(m: Measure | None, note: str | None) -> str:
        if m is None:
            return note or "-"
        return f"x{m.ratio:.3f} ({m.tensors} tensors, {m.base_ms:.1f} ms base)"

    peer = "" if row.peer is None and row.peer_note is None else f"peer {part(row.peer, row.peer_note)}; "
    return f"{row.device:4s} {key:12s} {row.tool}: {peer}monitor {part(row.monitor, row.monitor_note)}"


# -- markdown ------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _measure_cells(m: Measure | None, note: str | None) -> list[str]:
    """ratio, q1-q3, tensors/step, ms/tensor; a note (not installed, failed) takes the ratio cell."""
    if m is None:
        return [_cell(note) if note else "", "", "", ""]
    q1, _, q3 = m.quartiles
    per = m.ms_per_tensor
    return [f"{m.ratio:.3f}", f"{q1:.3f}–{q3:.3f}", "" if m.tensors is None else str(m.tensors),
            "" if per is None else f"{per:.4f}"]


def versions(peers: list[str]) -> dict[str, str]:
    """Installed version of every distribution the peers need ('not installed' for a missing one)."""
    found = {}
    for key in peers:
        for name in PEERS[key].distributions:
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = "not installed"
    return found


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads{gpu}")


def markdown(report: Report) -> str:
    """The tables, one per device and model, under the conditions they were measured in."""
    lines = [
        "# The Monitor against peer tools",
        "",
        f"Generated by `{report.command}` on {report.machine}. Load average {report.load[0]:.1f} before and "
        f"{report.load[1]:.1f} after.",
        "",
        f"- Training step: SGD with momentum, cross-entropy, batch {timing.BATCH} of {timing.IMAGE}x{timing.IMAGE} "
        "inputs (Cockpit: its own step form, see below).",
        "- Ratio: `analysis.bench.timing.compare`. Two identical model copies train in one process, steps "
        "interleaved A B B A ...; one carries the tool, the other nothing; each pair gives instrumented step / "
        f"uninstrumented step. Measured pairs per role: {report.steps}, after 2 warm-up pairs; then the copies swap "
        "roles; the ratio is the geometric mean over both roles of the median per-pair ratio, q1–q3 the quartiles "
        "of all per-pair ratios.",
        "- Each peer is paired with a Monitor (`every=1`, Parquet parts into a temporary folder) recording the "
        "statistics in its 'Monitor statistics' column on the same modules, timed on a fresh pair of copies. "
        "'Monitor, full set' and 'Monitor, param_grad.norm' have no peer.",
        "- Tensors per step are counted on one more step of a separate copy with the tool attached. Monitor: "
        "one per output, gradient, parameter or block and statistic group in the rows of that step. "
        + " ".join(f"{PEERS[k].name}: {PEERS[k].tensors}." for k in report.peers),
        "- ms/tensor = (ratio − 1) × uninstrumented median ms / tensors per step.",
        "",
        "Peers:",
        "",
    ]
    lines += [f"- {PEERS[k].name}: {PEERS[k].records}." for k in report.peers]
    if "cockpit" in report.peers:
        lines.append("- Cockpit 1.0.2 imports `pkg_resources` to read its own version, which setuptools >= 81 no "
                     "longer ships; there `import_cockpit` answers that one call from importlib.metadata.")
    installed = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    lines += ["", f"Installed versions: {installed}." if installed else "No peer selected.", ""]
    header = ("| tool | ratio | q1–q3 | tensors/step | ms/tensor | Monitor statistics | Monitor ratio | q1–q3 | "
              "tensors/step | ms/tensor |")
    rule = "| --- | ---: | --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"
    sections: dict[tuple[str, str], list[Row]] = {}
    for row in report.rows:
        sections.setdefault((row.device, row.model), []).append(row)
    for (device, model), rows in sections.items():
        bases = [m.base_ms for r in rows for m in (r.peer, r.monitor) if m is not None]
        base = f"; uninstrumented step {stats.median(bases):.1f} ms (median over its comparisons)" if bases else ""
        lines += [f"## {model}, {device}{base}", "", header, rule]
        for r in rows:
            lines.append("| " + " | ".join([_cell(r.tool), *_measure_cells(r.peer, r.peer_note), _cell(r.stats),
                                            *_measure_cells(r.monitor, r.monitor_note)]) + " |")
        lines.append("")
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------

def peers_option(value: str | list[str]) -> list[str]:
    return keys("--peers", value, list(PEERS))


def add_parser(commands: Any) -> None:
    """Register the `peers` command on argparse subparsers."""
    parser = commands.add_parser("peers", help="the Monitor against peer tools, written as markdown tables",
                                 description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/peers.md"))
    parser.add_argument("--steps", type=steps_option, default=10,
                        help="measured step pairs per role and comparison (default 10)")
    parser.add_argument("--models", type=models_option, default=DEFAULT_MODELS,
                        help=f"comma-separated from {', '.join(MODELS)} (default {DEFAULT_MODELS})")
    parser.add_argument("--device", type=device_option, default="auto",
                        help="cpu, cuda or auto (the CPU, plus CUDA when available; default)")
    parser.add_argument("--peers", type=peers_option, default=",".join(PEERS),
                        help=f"comma-separated subset of {', '.join(PEERS)} (default all)")
    parser.set_defaults(run=run)


def command_line(out: Path, steps: int, models: list[str], device: str, peers: list[str]) -> str:
    return (f"python -m analysis.bench peers --steps {steps} --models {','.join(models)} --device {device} "
            f"--peers {','.join(peers)} --out {out}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with the options of `args` (strings or parsed values) and write `args.out`."""
    steps = steps_option(getattr(args, "steps", 10))
    models = models_option(getattr(args, "models", DEFAULT_MODELS))
    device = device_option(getattr(args, "device", "auto"))
    peers = peers_option(getattr(args, "peers", ",".join(PEERS)))
    out = Path(getattr(args, "out", Path("benchmarks/peers.md")))
    devices = devices_for(device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as workdir:
        rows = benchmark(models, devices, peers, steps, Path(workdir))
    report = Report(rows, command_line(out, steps, models, device, peers), steps,
                    (load_before, os.getloadavg()[0]), versions(peers), machine(), peers)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report))
    print(f"wrote {out}")
    return 0
