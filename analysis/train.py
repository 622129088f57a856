"""The training driver: one validated config in, one run folder out.

``train(config)`` builds the model and data, trains for ``config.steps``
optimizer steps, and records per step the train loss, accuracy, learning rate
and wall time, plus validation loss and accuracy every ``config.val_every``
steps (and at the last step). Steps are numbered from 1: the row at step ``s``
describes the batch that the ``s``-th optimizer step trained on.

One trainer per run: ``train`` holds the run folder's lock
(:mod:`analysis.locks`) from before it writes the ``running`` record until
after it writes the final status. Another ``train`` of the same configuration
into the same root waits for it and then returns the finished run as skipped
(``wait=True``, the default), or raises :class:`analysis.locks.FolderBusy`
naming the holder at once (``wait=False``).

Launched by ``torchrun`` (``torchrun --nproc_per_node N -m analysis.train
--set ...``), ``train`` joins the process group (gloo on the CPU, NCCL on
CUDA, one GPU per process), wraps the model in DistributedDataParallel and
trains one run with all N processes. ``batch_size`` is the global batch: every
process draws the same batch a single process would and trains on its own
1/N share (``batch_size`` must divide by N), so the averaged gradient is the
single-process gradient of the whole batch (batch norm normalises each share
by itself). Train loss and accuracy are averaged over the processes. Rank 0
holds the lock, validates, and writes the record (with ``world_size``), the
metrics and the weights; every rank's Monitor writes its own part files into
the run's ``stats.parquet``.

Callbacks (:class:`Callback`) are the seam for extra instrumentation; the
default :class:`StatsCallback` attaches :class:`analysis.hooks.Monitor` so
every run also writes per-layer statistics to ``stats.parquet``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import pandas as pd
import torch
from torch import nn

from analysis.checks import setting
from analysis.config import ConfigError, TrainConfig
from analysis.data import Data, load_data
from analysis.locks import FolderBusy
from analysis.memory import check_training_memory
from analysis.models import build_model, summarize
from analysis.store import FINISHED, RunDir, utc_now

METRICS_FLUSH_EVERY = 100
T = TypeVar("T")


@dataclass
class RunContext:
    """What callbacks can see of a run in progress.

    ``model`` is the network itself, also in a distributed run (where the
    training loop calls its DistributedDataParallel wrapper): its module names
    and ``state_dict`` are those of a single-process run. ``rank`` and
    ``world_size`` say which of how many processes this is (0 and 1 when not
    distributed).
    """

    config: TrainConfig
    run_dir: RunDir
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    loss: float = math.nan
    rank: int = 0
    world_size: int = 1


class Callback:
    """Override any of these; each gets the live :class:`RunContext`, on every rank.

    ``on_train_end`` always runs, also when training fails, diverges or is
    interrupted, so callbacks can release hooks and flush their data.
    """

    def on_train_start(self, run: RunContext) -> None:
        """Called after the model and optimizer exist, before the first step."""

    def on_step_end(self, run: RunContext) -> None:
        """Called after each optimizer step and scheduler step."""

    def on_validation_start(self, run: RunContext) -> None:
        """Called before each validation (after step ``run.step``); rank 0 then evaluates the model."""

    def on_validation_end(self, run: RunContext) -> None:
        """Called after each validation, before the metrics up to ``run.step`` are written:
        the place to make a callback's own records of those steps durable."""

    def on_train_end(self, run: RunContext) -> None:
        """Called once at the end, whatever the outcome."""


class StatsCallback(Callback):
    """Writes per-layer activation and gradient statistics with the hook Monitor.

    Statistics steps are numbered like the metrics (from 1): steps 1, 1 + every, ...
    are recorded. Validation passes are not recorded (the monitor is paused),
    and the monitor flushes its rows at every validation, so once the metrics
    show a validation at step ``s`` the statistics up to ``s`` are on disk too.
    """

    def __init__(self, every: int, **monitor_options: Any):
        self.every = every
        self.monitor_options = monitor_options
        self.monitor = None

    def on_train_start(self, run: RunContext) -> None:
        from analysis.hooks import Monitor

        self.monitor = Monitor(run.model, optimizer=run.optimizer, every=self.every, first_step=1,
                               path=run.run_dir.stats_path, **self.monitor_options)
        self.monitor.__enter__()

    def on_validation_start(self, run: RunContext) -> None:
        self.monitor.pause()

    def on_validation_end(self, run: RunContext) -> None:
        self.monitor.resume()
        self.monitor.flush()

    def on_train_end(self, run: RunContext) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)
            self.monitor = None


@dataclass
class RunResult:
    """Outcome of :func:`train` (the same on every rank of a distributed run)."""

    run_id: str
    path: Path
    status: str
    skipped: bool = False
    diverged_step: int | None = None
    error: str | None = None
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, else cpu; other names are taken as given."""
    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device: 'cuda' was asked for but torch.cuda.is_available() is False")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_for(config: TrainConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """The network a config trains (freshly initialised from the current torch seed)."""
    return build_model(config.depth, residual=config.residual, shortcut=config.shortcut, norm=config.norm,
                       width=config.width, stem=config.stem, num_classes=num_classes,
                       in_channels=in_channels, zero_init_residual=config.zero_init_residual,
                       init=config.init)


def load_trained(root: str | Path, run_id: str) -> tuple[nn.Module, TrainConfig]:
    """A finished run's network with its trained weights (on the CPU, in eval mode) and its config."""
    run_dir = RunDir(root, run_id)
    if not run_dir.model_path.exists():
        raise FileNotFoundError(f"run_id: {run_id} has no trained weights at {run_dir.model_path}")
    record = run_dir.record()
    config = TrainConfig.from_dict(record["config"])
    data = record.get("data") or {}
    model = model_for(config, num_classes=data["num_classes"], in_channels=data["in_channels"])
    model.load_state_dict(torch.load(run_dir.model_path, map_location="cpu", weights_only=True))
    return model.eval(), config


def make_optimizer(config: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov, weight decay), Adam or AdamW from the config."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of ``config.lr`` for the optimizer step with 0-based index ``step``.

    Linear warmup over ``warmup_steps`` (from 1/warmup_steps to 1), then
    'constant', 'step' (times ``gamma`` at each milestone) or 'cosine' (from
    ``lr`` down to ``min_lr`` at the last step).
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.gamma ** sum(step >= m for m in config.milestones)
    span = max(1, config.steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr / config.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_progress(total: int, enabled: bool | None, description: str):
    """A tqdm bar: plain in a terminal, few short updates in Jupyter, silent otherwise.

    ``enabled=None`` decides by itself: shown in a terminal or a Jupyter
    kernel, hidden when output goes to a file or pipe. In a kernel the bar
    writes at most about 20 updates, so papermill's ``--log-output`` is not
    flooded with a line per step.
    """
    from tqdm import tqdm

    in_kernel = "ipykernel" in sys.modules and _in_ipython_kernel()
    if enabled is False:
        return tqdm(total=total, disable=True)
    if in_kernel:
        return tqdm(total=total, desc=description, file=sys.stdout, ascii=True, ncols=100,
                    miniters=max(1, total // 20), mininterval=0, maxinterval=float("inf"))
    return tqdm(total=total, desc=description, disable=None if enabled is None else False, dynamic_ncols=True)


def _in_ipython_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def first_nonfinite_module(model: nn.Module, x: torch.Tensor) -> str:
    """The first module, in forward order, whose output holds a NaN or an infinity on input ``x``.

    Run on a copy of the model (so its batch-norm statistics stay as they
    were), in the same mode, without gradients: where a diverged run's
    forward pass first went non-finite. ``"loss"`` when every module's output
    is finite (the loss itself overflowed).
    """
    import copy

    probe = copy.deepcopy(model)
    found: list[str] = []
    hooks = [module.register_forward_hook(
        lambda _module, _inputs, output, name=name: found.append(name)
        if not found and isinstance(output, torch.Tensor) and not torch.isfinite(output).all() else None)
        for name, module in probe.named_modules() if name and not list(module.children())]
    try:
        with torch.no_grad():
            probe(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else "loss"


def evaluate(model: nn.Module, data: Data, config: TrainConfig, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over the validation split (or its first ``val_batches``)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for index, (x, y) in enumerate(data.val_batches(config.batch_size)):
            if config.val_batches is not None and index >= config.val_batches:
                break
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
    model.train(was_training)
    return total_loss / max(count, 1), correct / max(count, 1)


@dataclass(frozen=True)
class Group:
    """The processes that train one run together: this one's ``rank`` among ``world_size`` (0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1

    def from_first(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by rank 0 only; its result, or the exception it raised, on every rank."""
        if self.world_size == 1:
            return compute()
        outcome: list[Any] = [None]
        if self.rank == 0:
            try:
                outcome[0] = (True, compute())
            except Exception as exc:  # every rank raises it, so none waits for the others forever
                outcome[0] = (False, exc)
        torch.distributed.broadcast_object_list(outcome, src=0)
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean(self, *values: torch.Tensor) -> list[float]:
        """Scalar tensors averaged over the ranks (their own values when alone)."""
        if self.world_size == 1:
            return [value.item() for value in values]
        stacked = torch.stack([value.detach().float() for value in values])
        torch.distributed.all_reduce(stacked)
        return (stacked / self.world_size).tolist()


def launched_distributed() -> bool:
    """Whether this process is one of several that train one run (torchrun started it, or WORLD_SIZE > 1)."""
    return torch.distributed.is_available() and (
        torch.distributed.is_torchelastic_launched() or int(os.environ.get("WORLD_SIZE", "1")) > 1)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[Group, torch.device]]:
    """The group this process trains in, and its device (CUDA: the GPU of its local rank).

    Outside torchrun and without an initialised default group: ``Group()``
    and ``device`` unchanged. Under torchrun the default group is initialised
    here (gloo on the CPU, NCCL on CUDA) and destroyed on exit; a group the
    caller initialised is used as it is and left alone.
    """
    distributed = torch.distributed
    if not distributed.is_available() or not (distributed.is_initialized() or launched_distributed()):
        yield Group(), device
        return
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"distributed training runs on 'cpu' or 'cuda', got {device.type!r}")
    owned = not distributed.is_initialized()
    if owned:
        distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        group = Group(distributed.get_rank(), distributed.get_world_size())
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", group.rank % torch.cuda.device_count())))
            torch.cuda.set_device(device)
        yield group, device
    finally:
        if owned:
            distributed.destroy_process_group()


def train(config: TrainConfig, *, root: str | Path = "runs", callbacks: Iterable[Callback] | None = None,
          progress: bool | None = None, skip_complete: bool = True, wait: bool = True) -> RunResult:
    """Train one run and write it to ``<root>/<run_id>/``.

    ``callbacks`` defaults to a :class:`StatsCallback` at ``config.stats_every``
    (none when that is 0). A finished run (complete or diverged) with the same
    config is returned as it is when ``skip_complete``. While another process
    trains the run, ``wait=True`` waits for it (then a finished run is
    returned as skipped, an unfinished one trained again) and ``wait=False``
    raises :class:`analysis.locks.FolderBusy` naming that process. A
    non-finite loss stops training with status ``diverged``; any other
    exception marks the run ``failed`` with its error and is re-raised.
    Metrics (and the default callback's statistics) are flushed at every
    validation, so a killed run keeps what it recorded. Under torchrun all
    processes train the run together (see the module docstring).
    """
    config.validate()
    run_dir = RunDir(root, config.run_id())
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with contextlib.ExitStack() as held:
        group, device = held.enter_context(process_group(resolve_device(config.device)))
        if config.batch_size % group.world_size:
            raise ConfigError("batch_size", f"must divide into equal shares for the {group.world_size} processes, "
                                            f"got {config.batch_size}")
        if group.from_first(lambda: _claim(run_dir, held, skip_complete=skip_complete, wait=wait)) == "skip":
            record = run_dir.record()
            return RunResult(run_dir.run_id, run_dir.path, record["status"], skipped=True,
                             diverged_step=record.get("diverged_step"), error=record.get("error"),
                             metrics=run_dir.read_metrics())
        return _train(config, run_dir, group, device, callbacks, progress)


def _claim(run_dir: RunDir, held: contextlib.ExitStack, *, skip_complete: bool, wait: bool) -> str:
    """'skip' for a finished run, else 'train' once this process holds the run's lock (kept in ``held``)."""
    if skip_complete and run_dir.status() in FINISHED:
        return "skip"
    try:
        held.enter_context(run_dir.lock(wait=False))
    except FolderBusy as busy:
        if not wait:
            raise
        print(f"{run_dir.run_id}: waiting for {busy.holder}, who is training this run", file=sys.stderr)
        held.enter_context(run_dir.lock(wait=True))
    return "skip" if skip_complete and run_dir.status() in FINISHED else "train"


def _train(config: TrainConfig, run_dir: RunDir, group: Group, device: torch.device,
           callbacks: Iterable[Callback] | None, progress: bool | None) -> RunResult:
    """The training loop of :func:`train`, once this process group owns the run."""
    if callbacks is None:
        callbacks = [StatsCallback(config.stats_every)] if config.stats_every else []
    callbacks = list(callbacks)
    lead = group.rank == 0
    data = load_data(config.dataset, root=config.data_root, seed=config.seed,
                     image_size=config.image_size, download=config.download)
    check_training_memory(config, in_channels=data.in_channels, num_classes=data.num_classes, device=device)
    torch.manual_seed(config.seed)
    net = model_for(config, num_classes=data.num_classes, in_channels=data.in_channels)
    summary = summarize(net, (data.in_channels, data.image_size, data.image_size)).to_dict()
    net.to(device)
    model = net if group.world_size == 1 else nn.parallel.DistributedDataParallel(
        net, device_ids=[device] if device.type == "cuda" else None)
    optimizer = make_optimizer(config, net.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    if lead:
        run_dir.start(config.to_dict(), device=str(device), world_size=group.world_size, model=summary,
                      data={"train_size": data.train_size, "val_size": data.val_size,
                            "num_classes": data.num_classes, "in_channels": data.in_channels})
    group.barrier()  # the run folder is cleared before any rank writes statistics into it

    run = RunContext(config, run_dir, net, optimizer, device, rank=group.rank, world_size=group.world_size)
    share = slice(group.rank * config.batch_size // group.world_size,
                  (group.rank + 1) * config.batch_size // group.world_size)
    rows: list[tuple[int, str, str, float]] = []
    status, error, diverged_step, diverged_layer = "failed", None, None, None
    started = time.perf_counter()
    bar = make_progress(config.steps, progress if lead else False, f"{run_dir.run_id}")
    try:
        for callback in callbacks:
            callback.on_train_start(run)
        batches = data.train_batches(config.batch_size, seed=config.seed)
        model.train()
        for step in range(1, config.steps + 1):
            x, y = next(batches)
            x, y = x[share].to(device, non_blocking=True), y[share].to(device, non_blocking=True)
            lr = optimizer.param_groups[0]["lr"]
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss_value, accuracy = group.mean(loss, (logits.argmax(1) == y).float().mean())
            elapsed = time.perf_counter() - started
            rows += [(step, "train", "loss", loss_value), (step, "train", "accuracy", accuracy),
                     (step, "train", "lr", lr), (step, "train", "time", elapsed)]
            if not math.isfinite(loss_value):
                status, diverged_step = "diverged", step
                diverged_layer = first_nonfinite_module(net, x) if lead else None
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            run.step, run.loss = step, loss_value
            for callback in callbacks:
                callback.on_step_end(run)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            bar.update(1)
            if step % config.val_every == 0 or step == config.steps:
                for callback in callbacks:
                    callback.on_validation_start(run)
                if lead:
                    val_loss, val_accuracy = evaluate(net, data, config, device)
                    rows += [(step, "val", "loss", val_loss), (step, "val", "accuracy", val_accuracy)]
                for callback in callbacks:
                    callback.on_validation_end(run)
            if lead and (step % config.val_every == 0 or step % METRICS_FLUSH_EVERY == 0):
                run_dir.write_metrics(rows)
                run_dir.update(steps_completed=step)
        else:
            status = "complete"
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        bar.close()
        try:
            for callback in callbacks:
                callback.on_train_end(run)
        finally:
            if error is None:
                group.barrier()  # every rank's statistics are written before the record says the run ended
            if lead:
                run_dir.write_metrics(rows)
                if error is None:
                    run_dir.save_model(net.state_dict())
                run_dir.update(status=status, error=error, diverged_step=diverged_step,
                               diverged_layer=diverged_layer, steps_completed=run.step, end_time=utc_now())
    group.barrier()  # rank 0 has written the final record and metrics
    return RunResult(run_dir.run_id, run_dir.path, status, diverged_step=diverged_step,
                     metrics=run_dir.read_metrics())


def config_from(path: str | Path | None, settings: Sequence[str] = ()) -> TrainConfig:
    """A validated TrainConfig from a YAML (or JSON) mapping of fields in ``path``, then ``KEY=VALUE`` settings.

    Values are read as YAML, as the sweep's ``--set`` reads them (``lr=1e-3``,
    ``milestones=[100, 150]``, ``width=None``); a setting overrides the file.
    """
    import yaml

    fields: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"--config {path}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path}: expected a mapping of TrainConfig fields, got {type(loaded).__name__}")
        fields.update(loaded)
    for item in settings:
        key, values = setting(item, "KEY=VALUE")
        if len(values) != 1:
            raise ValueError(f"--set {key}: expected one value, got {len(values)} (write a list as [a, b])")
        fields[key] = values[0]
    return TrainConfig.from_dict(fields).validate()


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.train``: train one configuration, alone or as one process of ``torchrun``.

    Exit status 0 when the run is complete (now or already), 1 when it
    diverged, 2 with a one-line error for bad input, a run another process
    holds (with ``--no-wait``) or a file that cannot be read or written.
    """
    parser = argparse.ArgumentParser(
        prog="python -m analysis.train", description="Train one configuration into <root>/<run_id>/.",
        epilog="Under torchrun (torchrun --nproc_per_node N -m analysis.train ...) the N processes train the run "
               "together; --set batch_size is the global batch.")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON mapping of TrainConfig fields")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field, read as YAML; overrides --config (repeat for more)")
    parser.add_argument("--root", default="runs", help="folder of run folders (default: runs)")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="fail at once if another process is training this run (default: wait for it)")
    args = parser.parse_args(argv)
    try:
        result = train(config_from(args.config, args.settings), root=args.root, wait=args.wait)
    except (ValueError, OSError, FolderBusy) as exc:
        print(f"train: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(f"{result.run_id}: {result.status}{' (trained before)' if result.skipped else ''}: {result.path}")
    return 0 if result.status == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
