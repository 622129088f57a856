"""The Monitor as a Lightning callback (`lightning` or `pytorch-lightning`).

    from analysis.hooks.lightning import MonitorCallback
    trainer = Trainer(max_steps=1000, callbacks=[MonitorCallback(every=50, path="runs/x/stats.parquet")])
    trainer.fit(module, data)

At train start a Monitor attaches to the LightningModule with the trainer's
torch optimizer and numbers steps from the trainer's global step; it advances
on each optimizer step (after gradient accumulation), records nothing while
validation runs, and detaches at train end and on an exception.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from analysis.extras import optional, require
from analysis.hooks.attach import AttachedMonitor

_NAMES = [name for name in ("lightning.pytorch", "pytorch_lightning") if optional(name) is not None]
if not _NAMES:
    require("pytorch_lightning", "integrations", feature="analysis.hooks.lightning (lightning or pytorch-lightning)")
_CALLBACKS = tuple(importlib.import_module(f"{name}.callbacks").Callback for name in _NAMES)
_WRAPPERS = tuple(importlib.import_module(f"{name}.core.optimizer").LightningOptimizer for name in _NAMES)


class MonitorCallback(AttachedMonitor, *_CALLBACKS):
    """Records per-layer statistics of a LightningModule while a Lightning Trainer fits it.

    Takes the options of `analysis.hooks.Monitor`: `every`, `include`, `exclude`,
    `stats`, `path`. Rows are those of a Monitor in a plain loop: step N is the
    optimizer step taken at the trainer's global step N, holding the activations of
    each of its accumulated micro-batches (`call` 0, 1, ...). `frame()` returns them;
    `monitor` is the attached Monitor while training runs.

    With a gradient scaler (fp16), a step the scaler skips for inf or NaN gradients
    does not advance the monitor: its forward passes count towards the next step
    taken, and the steps of later rows trail the global step by the steps skipped.
    Gradients are read just before the optimizer step, after unscaling and clipping;
    output gradients (`activation_grad`) are those of the scaled loss.
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise ValueError(f"MonitorCallback follows one optimizer; this trainer has {len(optimizers)}")
        self.attach(pl_module, _torch_optimizer(optimizers[0]), first_step=trainer.global_step)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.pause()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.resume()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.detach()


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer whose step hooks fire: unwrapped from a LightningOptimizer."""
    while isinstance(optimizer, _WRAPPERS):
        optimizer = optimizer.optimizer
    return optimizer
