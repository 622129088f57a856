"""The Monitor as a Hugging Face `Trainer` callback.

    from analysis.hooks.transformers import MonitorCallback
    callback = MonitorCallback(every=50, path="runs/x/stats.parquet")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    with callback:  # detaches on an exception too: the Trainer has no exception event
        trainer.train()

At train begin a Monitor attaches to the model with the torch optimizer inside
the Trainer's (accelerate's `AcceleratedOptimizer` has no step hooks of its own)
and numbers steps from the trainer's global step; it advances on each optimizer
step (after gradient accumulation), records nothing while the Trainer evaluates,
and detaches at train end.
"""

from __future__ import annotations

from typing import Any

import torch

from analysis.extras import optional, require
from analysis.hooks.attach import AttachedMonitor

_transformers = require("transformers", "integrations", feature="analysis.hooks.transformers")
_accelerate_optimizer = optional("accelerate.optimizer")
_WRAPPERS = (_accelerate_optimizer.AcceleratedOptimizer,) if _accelerate_optimizer is not None else ()


class MonitorCallback(AttachedMonitor, _transformers.TrainerCallback):
    """Records per-layer statistics of a model while a Hugging Face Trainer trains it.

    Takes the options of `analysis.hooks.Monitor`: `every`, `include`, `exclude`,
    `stats`, `path`. Rows are those of a Monitor in a plain loop: step N is the
    optimizer step taken at the trainer's global step N, holding the activations of
    each of its accumulated micro-batches (`call` 0, 1, ...). `frame()` returns them;
    `monitor` is the attached Monitor while training runs.

    The Trainer tells callbacks of its end but not of an exception: use the callback
    as a context manager around `trainer.train()` (or call `detach()`) so that no hook
    outlives a run that raises. A later `train()` detaches a Monitor left attached.

    With fp16 and a gradient scaler, a step the scaler skips for inf or NaN gradients
    does not advance the monitor: its forward passes count towards the next step
    taken, and the steps of later rows trail the global step by the steps skipped.
    Gradients are read just before the optimizer step, after unscaling and clipping;
    output gradients (`activation_grad`) are those of the scaled loss.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise ValueError("MonitorCallback needs the model and optimizer the Trainer passes at train begin")
        self.attach(model, _torch_optimizer(optimizer), first_step=state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_evaluate:  # the Trainer evaluates right after this event, before the next step
            self.pause()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.resume()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.detach()


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer whose step hooks fire: unwrapped from accelerate's AcceleratedOptimizer."""
    while isinstance(optimizer, _WRAPPERS):
        optimizer = optimizer.optimizer
    return optimizer
