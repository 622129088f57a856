"""The training driver: one validated config in, one run folder out.

``train(config)`` builds the model and data, trains for ``config.steps``
optimizer steps, and records per step the train loss, accuracy, learning rate
and wall time, plus validation loss and accuracy every ``config.val_every``
steps (and at the last step). Steps are numbered from 1: the row at step ``s``
describes the batch that the ``s``-th optimizer step trained on.

Callbacks (:class:`Callback`) are the seam for extra instrumentation; the
default :class:`StatsCallback` attaches :class:`analysis.hooks.Monitor` so
every run also writes per-layer statistics to ``stats.parquet``.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from analysis.config import TrainConfig
from analysis.data import Data, load_data
from analysis.models import build_model, summarize
from analysis.store import FINISHED, RunDir, utc_now

METRICS_FLUSH_EVERY = 100


@dataclass
class RunContext:
    """What callbacks can see of a run in progress."""

    config: TrainConfig
    run_dir: RunDir
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    loss: float = math.nan


class Callback:
    """Override any of these; each gets the live :class:`RunContext`.

    ``on_train_end`` always runs, also when training fails, diverges or is
    interrupted, so callbacks can release hooks and flush their data.
    """

    def on_train_start(self, run: RunContext) -> None:
        """Called after the model and optimizer exist, before the first step."""

    def on_step_end(self, run: RunContext) -> None:
        """Called after each optimizer step and scheduler step."""

    def on_train_end(self, run: RunContext) -> None:
        """Called once at the end, whatever the outcome."""


class StatsCallback(Callback):
    """Writes per-layer activation and gradient statistics with the hook Monitor.

    Statistics steps are numbered like the metrics (from 1): steps 1, 1 + every, ...
    are recorded.
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

    def on_train_end(self, run: RunContext) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)
            self.monitor = None


@dataclass
class RunResult:
    """Outcome of :func:`train`."""

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


def train(config: TrainConfig, *, root: str | Path = "runs", callbacks: Iterable[Callback] | None = None,
          progress: bool | None = None, skip_complete: bool = True) -> RunResult:
    """Train one run and write it to ``<root>/<run_id>/``.

    ``callbacks`` defaults to a :class:`StatsCallback` at ``config.stats_every``
    (none when that is 0). A finished run (complete or diverged) with the same
    config is returned as it is when ``skip_complete``. A non-finite loss stops
    training with status ``diverged``; any other exception marks the run
    ``failed`` with its error and is re-raised. Metrics are flushed at every
    validation, so a killed run keeps what it recorded.
    """
    config.validate()
    run_dir = RunDir(root, config.run_id())
    if skip_complete and run_dir.status() in FINISHED:
        record = run_dir.record()
        return RunResult(run_dir.run_id, run_dir.path, record["status"], skipped=True,
                         diverged_step=record.get("diverged_step"), error=record.get("error"),
                         metrics=run_dir.read_metrics())
    if callbacks is None:
        callbacks = [StatsCallback(config.stats_every)] if config.stats_every else []
    callbacks = list(callbacks)

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = load_data(config.dataset, root=config.data_root, seed=config.seed,
                     image_size=config.image_size, download=config.download)
    torch.manual_seed(config.seed)
    model = model_for(config, num_classes=data.num_classes, in_channels=data.in_channels)
    summary = summarize(model, (data.in_channels, data.image_size, data.image_size)).to_dict()
    model.to(device)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    run_dir.start(config.to_dict(), device=str(device), model=summary,
                  data={"train_size": data.train_size, "val_size": data.val_size,
                        "num_classes": data.num_classes, "in_channels": data.in_channels})

    run = RunContext(config, run_dir, model, optimizer, device)
    rows: list[tuple[int, str, str, float]] = []
    status, error, diverged_step, diverged_layer = "failed", None, None, None
    started = time.perf_counter()
    bar = make_progress(config.steps, progress, f"{run_dir.run_id}")
    try:
        for callback in callbacks:
            callback.on_train_start(run)
        batches = data.train_batches(config.batch_size, seed=config.seed)
        model.train()
        for step in range(1, config.steps + 1):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = optimizer.param_groups[0]["lr"]
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss_value = loss.item()
            accuracy = (logits.argmax(1) == y).float().mean().item()
            elapsed = time.perf_counter() - started
            rows += [(step, "train", "loss", loss_value), (step, "train", "accuracy", accuracy),
                     (step, "train", "lr", lr), (step, "train", "time", elapsed)]
            if not math.isfinite(loss_value):
                status, diverged_step = "diverged", step
                diverged_layer = first_nonfinite_module(model, x)
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
                val_loss, val_accuracy = evaluate(model, data, config, device)
                rows += [(step, "val", "loss", val_loss), (step, "val", "accuracy", val_accuracy)]
            if step % config.val_every == 0 or step % METRICS_FLUSH_EVERY == 0:
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
            run_dir.write_metrics(rows)
            if error is None:
                run_dir.save_model(model.state_dict())
            run_dir.update(status=status, error=error, diverged_step=diverged_step, diverged_layer=diverged_layer,
                           steps_completed=run.step, end_time=utc_now())
    return RunResult(run_dir.run_id, run_dir.path, status, diverged_step=diverged_step,
                     metrics=run_dir.read_metrics())
