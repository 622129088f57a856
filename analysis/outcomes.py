"""What each run ended with, and those values over seeds for each configuration.

:func:`run_values` gives one row per run with every headline value (defined
in :data:`VALUES`), computed from the run's tidy metrics and statistics;
:func:`group_runs` gathers the runs of each configuration (every setting but
the seed) and :func:`group_records` summarises each value over the seeds as
plain JSON, the shape of ``summary.json`` and each study's ``findings.json``.
Runs of different configurations are never averaged together; only seeds are.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from analysis import gradient_flow
from analysis.checks import is_number
from analysis.frames import (BLOCK_RATIO, FINAL_COLUMNS, TRAIN_WINDOW, block_rows, final_metrics, relu_layers,
                             spread, to_json_value, weight_layers, UPDATE_RATIO)

VALUES: dict[str, str] = {
    "final_train_loss": f"mean train loss over the last {TRAIN_WINDOW} steps",
    "final_train_accuracy": f"mean train accuracy over the last {TRAIN_WINDOW} steps",
    "final_val_loss": "validation loss at the last validation",
    "final_val_accuracy": "validation accuracy at the last validation",
    "grad_ratio_init": "stem conv over last main-path conv weight-gradient norm, first recorded step",
    "grad_ratio_final": "the same at the last recorded step",
    "grad_growth_init": "fitted weight-gradient norm factor per layer towards the input, first recorded step",
    "grad_growth_final": "the same at the last recorded step",
    "grad_growth_r2_init": "r2 of the log-linear fit at the first recorded step",
    "scaled_growth_init": "fitted factor per layer of ||g|| * ||W||, first recorded step",
    "scaled_growth_final": "the same at the last recorded step",
    "update_ratio_peak_lr": "median over main-path weight layers of ||dW|| / ||W|| at the recorded step with the highest learning rate",
    "peak_lr": "the learning rate at that step",
    "dead_fraction_final": "mean over main-path ReLUs of the fraction of dead channels, last recorded step",
    "block_ratio_final": "median over residual blocks of ||branch|| / ||shortcut||, last recorded step",
    "diverged": "1 when the loss became non-finite (summed over seeds: the count of diverged runs)",
}
"""Every per-run value: name -> definition (gradient flow: see :mod:`analysis.gradient_flow`)."""


def run_values(runs: pd.DataFrame, metrics: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``runs`` (``run_id`` and ``status`` columns): ``run_id``, ``n_layers`` (main-path
    convs in the gradient-flow fit) and every value of :data:`VALUES`.

    ``metrics`` and ``stats`` are tidy frames with a ``run_id`` column; a run
    without statistics gets NaN for the statistic-based values.
    """
    finals = final_metrics(metrics, by="run_id").set_index("run_id") if len(metrics) else pd.DataFrame()
    flow = gradient_flow.at_ends(gradient_flow.flow_table(stats)).set_index(["run_id", "end"])
    updates = weight_layers(stats, UPDATE_RATIO)
    dead = relu_layers(stats)
    blocks = block_rows(stats, BLOCK_RATIO[1])
    lrs = metrics[(metrics["split"] == "train") & (metrics["metric"] == "lr")]
    rows = []
    for run_id, status in zip(runs["run_id"], runs["status"]):
        row: dict[str, Any] = {"run_id": run_id, "n_layers": 0}
        for column in FINAL_COLUMNS:
            row[column] = float(finals.at[run_id, column]) if run_id in finals.index else math.nan
        for end in ("init", "final"):
            found = flow.loc[(run_id, end)] if (run_id, end) in flow.index else None
            row[f"grad_ratio_{end}"] = float(found["ratio"]) if found is not None else math.nan
            row[f"grad_growth_{end}"] = float(found["growth"]) if found is not None else math.nan
            row[f"scaled_growth_{end}"] = float(found["scaled_growth"]) if found is not None else math.nan
            if found is not None:
                row["n_layers"] = int(found["n_layers"])
            if end == "init":
                row["grad_growth_r2_init"] = float(found["r2"]) if found is not None else math.nan
        row["update_ratio_peak_lr"], row["peak_lr"] = _update_at_peak_lr(
            updates[updates["run_id"] == run_id], lrs[lrs["run_id"] == run_id])
        mine = dead[dead["run_id"] == run_id]
        row["dead_fraction_final"] = _at_last_step(mine).mean() if len(mine) else math.nan
        mine = blocks[blocks["run_id"] == run_id]
        row["block_ratio_final"] = _at_last_step(mine).median() if len(mine) else math.nan
        row["diverged"] = float(status == "diverged")
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", "n_layers", *VALUES])


def _at_last_step(rows: pd.DataFrame) -> pd.Series:
    return rows.loc[rows["step"] == rows["step"].max(), "value"].astype(float)


def _update_at_peak_lr(updates: pd.DataFrame, lrs: pd.DataFrame) -> tuple[float, float]:
    """Median update ratio over layers at the recorded step whose learning rate is highest (first such step)."""
    if updates.empty or lrs.empty:
        return math.nan, math.nan
    lr_at = lrs.set_index("step")["value"]
    steps = [step for step in sorted(set(updates["step"])) if step in lr_at.index]
    if not steps:
        return math.nan, math.nan
    peak = max(steps, key=lambda step: (lr_at[step], -step))
    return float(updates.loc[updates["step"] == peak, "value"].median()), float(lr_at[peak])


def group_runs(runs: pd.DataFrame, settings: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The runs of each configuration: ``(settings of the group, its runs sorted by seed)`` in a stable order.

    Groups by every one of ``settings`` (lists compared by value), never by the seed.
    """
    if runs.empty:
        return []
    if not settings:
        return [({}, runs.sort_values("seed"))]
    keys = runs[list(settings)].map(_key)
    groups = []
    for _, members in runs.groupby([keys[name] for name in settings], sort=False, dropna=False):
        first = members.iloc[0]
        groups.append(({name: to_json_value(first[name]) for name in settings}, members.sort_values("seed")))
    return sorted(groups, key=lambda group: [_sort_key(group[0][name]) for name in settings])


def group_records(runs: pd.DataFrame, values: pd.DataFrame, settings: Sequence[str],
                  names: Sequence[str] = tuple(VALUES)) -> list[dict[str, Any]]:
    """One JSON-ready record per configuration: settings, n_seeds, seeds and each value's :func:`spread`.

    ``diverged`` is a count (the sum over seeds), the others are summarised
    with mean, sd, min, max and the per-seed values (NaN as None).
    """
    indexed = values.set_index("run_id")
    records = []
    for group_settings, members in group_runs(runs, settings):
        per_run = indexed.loc[members["run_id"]]
        metrics = {}
        for name in names:
            if name == "diverged":
                metrics[name] = int(per_run[name].sum())
            else:
                metrics[name] = spread(per_run[name])
        records.append(to_json_value({"settings": group_settings, "n_seeds": len(members),
                                      "seeds": [int(seed) for seed in members["seed"]], "metrics": metrics}))
    return records


def _key(value: Any) -> Any:
    """A groupable form of a setting value (lists and None compare by value)."""
    return repr(value) if isinstance(value, (list, tuple, dict)) or value is None else value


def _sort_key(value: Any) -> tuple:
    """Numbers by value, then everything else as text (None first)."""
    if value is None:
        return (0, 0, "")
    if is_number(value):
        return (1, value, "")
    return (2, 0, str(value))
