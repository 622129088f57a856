"""The Hugging Face callback: a real Trainer on the CPU, with a tiny BERT built from a config, records a step
per optimizer step with every micro-batch's activations, and leaves no hook."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from analysis.hooks import Monitor
from analysis.hooks.transformers import MonitorCallback

STEPS = 4
MICRO_BATCHES = 2
BATCH = 2
LR = 1e-3
KEY = ["module", "stat", "call"]


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


EXAMPLE = {"input_ids": torch.tensor([5, 17, 3, 29, 8, 11, 2, 30]), "labels": 1}
"""Every example is this one, so each micro-batch is the same whatever order the Trainer draws them in."""


def train(model: torch.nn.Module, callback: MonitorCallback, tmp_path, eval_dataset=None, **options) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=STEPS, per_device_train_batch_size=BATCH,
                             gradient_accumulation_steps=MICRO_BATCHES, learning_rate=LR,
                             lr_scheduler_type="constant", use_cpu=True, report_to="none", save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, **options)
    dataset = [EXAMPLE] * (STEPS * MICRO_BATCHES * BATCH)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, callbacks=[callback])
    trainer.train()
    return trainer


def assert_no_hooks(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


@pytest.mark.parametrize("bf16", [False, True])
def test_callback_records_each_optimizer_step_with_its_micro_batches(tmp_path, bf16):
    model = tiny_bert()
    initial = copy.deepcopy(model)
    callback = MonitorCallback(every=2, path=tmp_path / "stats.parquet")
    trainer = train(model, callback, tmp_path, bf16=bf16)

    frame = callback.frame()
    assert sorted(frame.step.unique()) == [0, 2]  # one step per optimizer step, not per micro-batch
    for step in (0, 2):
        rows = frame[frame.step == step]
        for kind in ("activation", "activation_grad"):
            calls = rows[rows.kind == kind].groupby("module").call.unique().map(sorted)
            assert calls.map(len).min() == MICRO_BATCHES and calls.map(max).max() == MICRO_BATCHES - 1, kind
        updates = rows[(rows.kind == "update") & (rows.param == "weight")]
        assert len(updates) and (updates.value > 0).all()
        assert {"weight", "param_grad"} <= set(rows.kind)
        lrs = rows[(rows.kind == "global") & (rows.stat == "lr")]
        assert lrs.param.tolist() == ["group0", "group1"] and lrs.value.tolist() == pytest.approx([LR, LR])
    assert callback.monitor is None
    assert_no_hooks(model, trainer.optimizer.optimizer)

    # The first step's activations are those of the initial model on each micro-batch.
    batch = {"input_ids": EXAMPLE["input_ids"].repeat(BATCH, 1), "labels": torch.tensor([1] * BATCH)}
    with Monitor(initial, stats="activation", every=1) as monitor:
        for _ in range(MICRO_BATCHES):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                initial(**batch)
        monitor.step()
    expected = monitor.frame().set_index(KEY).value.sort_index()
    recorded = frame[(frame.step == 0) & (frame.kind == "activation")].set_index(KEY).value.sort_index()
    pd.testing.assert_series_equal(recorded, expected, rtol=1e-5, atol=1e-8)


def test_evaluation_between_steps_is_not_recorded(tmp_path):
    plain, evaluated = MonitorCallback(every=1), MonitorCallback(every=1)
    train(tiny_bert(), plain, tmp_path / "plain")
    trainer = train(tiny_bert(), evaluated, tmp_path / "evaluated", eval_strategy="steps", eval_steps=1,
                    per_device_eval_batch_size=BATCH, eval_dataset=[EXAMPLE] * BATCH)
    assert len(trainer.state.log_history) >= STEPS  # an evaluation after every step
    pd.testing.assert_frame_equal(evaluated.frame(), plain.frame())


def test_a_run_that_raises_inside_the_callback_block_leaves_no_hook(tmp_path):
    model = tiny_bert()
    calls = 0

    def fail_on_the_fifth_forward(module, args, kwargs):
        nonlocal calls
        calls += 1
        if calls == 5:  # the first micro-batch of the third optimizer step
            raise RuntimeError("training failed on purpose")

    handle = model.register_forward_pre_hook(fail_on_the_fifth_forward, with_kwargs=True)
    callback = MonitorCallback(every=1)
    with pytest.raises(RuntimeError, match="failed on purpose"), callback:
        train(model, callback, tmp_path)
    handle.remove()
    assert callback.monitor is None
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    assert sorted(callback.frame().step.unique()) == [0, 1]


def test_a_later_run_detaches_a_monitor_left_attached(tmp_path):
    model = tiny_bert()
    callback = MonitorCallback(every=1)
    callback.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), first_step=0)  # as a run that raised
    trainer = train(model, callback, tmp_path)
    assert sorted(callback.frame().step.unique()) == list(range(STEPS))
    assert_no_hooks(model, trainer.optimizer.optimizer)
