"""The Lightning callback: a real Trainer on the CPU records the rows of a plain Monitor loop and leaves no hook."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from analysis.hooks import Monitor
from analysis.hooks.lightning import MonitorCallback
from analysis.models import build_model

STEPS = 4
MICRO_BATCHES = 2
BATCH = 4
KEY = ["step", "kind", "stat", "module", "param", "call"]
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # pytorch-lightning's own use of a deprecated torch API


class Classifier(pl.LightningModule):
    """A ResNet-8 of width 4 (analysis.models) on 8x8 images."""

    def __init__(self, fail_at_batch: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model(8, width=4)
        self.fail_at_batch = fail_at_batch

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("training failed on purpose")
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    n = STEPS * MICRO_BATCHES * BATCH
    images = torch.randn(n, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH)


def fit(module: Classifier, callback: MonitorCallback, **options) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=STEPS, accumulate_grad_batches=MICRO_BATCHES, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], **options)
    trainer.fit(module, loader())
    return trainer


def plain_loop(module: Classifier, autocast: bool) -> pd.DataFrame:
    """What the callback should record: a plain Monitor loop with the same accumulation (and autocast)."""
    optimizer = module.configure_optimizers()
    with Monitor(module, optimizer=optimizer, every=2) as monitor:
        for i, batch in enumerate(loader()):
            context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with context:
                loss = module.training_step(batch, i) / MICRO_BATCHES
            loss.backward()
            if (i + 1) % MICRO_BATCHES == 0:
                optimizer.step()
                optimizer.zero_grad()
    return monitor.frame()


def assert_no_hooks(module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for name, submodule in module.named_modules():
        assert not submodule._forward_hooks, name
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_callback_rows_equal_those_of_a_plain_loop(precision):
    module, reference = Classifier(), Classifier()
    callback = MonitorCallback(every=2)
    trainer = fit(module, callback, precision=precision)

    frame = callback.frame().sort_values(KEY, ignore_index=True)
    expected = plain_loop(reference, autocast=precision == "bf16-mixed").sort_values(KEY, ignore_index=True)
    assert sorted(frame.step.unique()) == [0, 2]  # one step per optimizer step, not per micro-batch
    assert set(frame.kind) == {"activation", "activation_grad", "param_grad", "weight", "update", "global", "block"}
    assert set(frame[frame.kind.isin(["activation", "activation_grad"])].call) == {0, 1}  # both micro-batches
    pd.testing.assert_frame_equal(frame, expected, rtol=1e-5, atol=1e-8)
    assert callback.monitor is None
    assert_no_hooks(module, trainer.optimizers[0])


def test_validation_between_steps_is_not_recorded():
    class WithValidation(Classifier):
        def validation_step(self, batch, batch_idx):
            images, labels = batch
            self.validated += 1
            return nn.functional.cross_entropy(self.net(images), labels)

        def val_dataloader(self):
            return loader()

    module, reference = WithValidation(), Classifier()
    module.validated = 0
    callback = MonitorCallback(every=2)
    fit(module, callback, val_check_interval=MICRO_BATCHES, limit_val_batches=2, num_sanity_val_steps=0)
    assert module.validated == 8  # after each step's last micro-batch, before its optimizer step (recorded: 0, 2)
    frame = callback.frame().sort_values(KEY, ignore_index=True)
    expected = plain_loop(reference, autocast=False).sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected, rtol=1e-5, atol=1e-8)


def test_options_are_checked_when_the_callback_is_made():
    with pytest.raises(ValueError, match="every"):
        MonitorCallback(every=0)
    with pytest.raises(ValueError, match="stats: unknown statistic 'activation.median'"):
        MonitorCallback(stats="activation.median")
    with pytest.raises(ValueError, match="path must be"):
        MonitorCallback(path=3)


def test_a_run_that_raises_leaves_no_hook_and_keeps_the_steps_it_finished(tmp_path):
    module = Classifier(fail_at_batch=5)  # in the third optimizer step
    callback = MonitorCallback(every=1, path=tmp_path / "stats.parquet")
    trainer = pl.Trainer(max_steps=STEPS, accumulate_grad_batches=MICRO_BATCHES, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])
    with pytest.raises(RuntimeError, match="failed on purpose"):
        trainer.fit(module, loader())
    assert callback.monitor is None
    assert_no_hooks(module, trainer.optimizers[0])
    assert sorted(callback.frame().step.unique()) == [0, 1]


def test_a_step_the_gradient_scaler_skips_does_not_advance_the_monitor():
    class Overflowing(Classifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("inf") if self.trainer.global_step == 1 else loss

    module = Overflowing()
    callback = MonitorCallback(every=1)
    scaler = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    trainer = fit(module, callback, plugins=[scaler])

    frame = callback.frame()
    assert trainer.global_step == STEPS
    assert sorted(frame.step.unique()) == [0, 1, 2]  # the skipped step taken at global step 1 is not a step
    activations = frame[frame.kind == "activation"]
    assert activations.groupby("step").call.max().tolist() == [1, 3, 1]  # its micro-batches join the next step
    nonfinite = frame[(frame.kind == "activation_grad") & (frame.stat == "nonfinite")]
    overflowed = (nonfinite.step == 1) & (nonfinite.call <= 1)
    assert nonfinite[overflowed].value.sum() > 0 and nonfinite[~overflowed].value.sum() == 0
    assert_no_hooks(module, trainer.optimizers[0])
