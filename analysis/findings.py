"""Findings of a depth study: numbers computed from the run's frames, and sentences that carry them.

:func:`compute_findings` returns a :class:`Findings` with a per-variant table
of values, a few comparisons between the variants, and sentences built only
from those values, so the text always describes the data at hand. The layer
and block rows are the ones the figures in :mod:`analysis.plots` draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.plots import (BLOCK_RATIO, GRAD_NORM, UPDATE_RATIO, block_rows, relu_layers, variants_in,
                            weight_layers)
from analysis.summary import FINAL_COLUMNS, TRAIN_WINDOW, final_metrics

FINAL_WINDOW = TRAIN_WINDOW
"""Train loss and accuracy at the end of a run: the mean over this many last recorded steps
(the same definition as the cross-depth summary, :func:`analysis.summary.final_metrics`)."""

COLUMNS = (
    "status", "steps", "diverged_step", "final_train_loss", "final_train_accuracy", "final_val_loss",
    "final_val_accuracy", "first_stats_step", "last_stats_step", "grad_ratio_first", "grad_ratio_last",
    "max_update_ratio_first", "median_update_ratio_last", "dead_fraction", "max_dead_fraction", "block_ratio",
)


@dataclass(repr=False)
class Findings:
    """Per-variant values (``table``, one row per variant, columns :data:`COLUMNS`),
    comparisons between the variants (``comparison``) and the ``sentences`` that report them."""

    table: pd.DataFrame
    comparison: dict[str, Any] = field(default_factory=dict)
    sentences: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The sentences as a markdown bullet list."""
        return "\n".join(f"- {sentence}" for sentence in self.sentences)

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def compute_findings(metrics: pd.DataFrame, stats: pd.DataFrame, *,
                     statuses: dict[str, str] | None = None,
                     diverged_steps: dict[str, int | None] | None = None,
                     window: int = FINAL_WINDOW) -> Findings:
    """Values and sentences of a study from its tidy ``metrics`` and ``stats`` frames.

    Per variant:

    - ``final_train_loss`` / ``final_train_accuracy``: mean over the last
      ``window`` recorded train steps; ``final_val_*``: the last validation;
    - ``grad_ratio_first`` / ``grad_ratio_last``: weight-gradient norm of the
      first main-path weight layer over that of the last (the classifier), at
      the first and at the last recorded statistics step; below 1, gradients
      shrink on their way back to the input;
    - ``max_update_ratio_first``: the largest update-to-weight ratio
      ||dW|| / ||W|| of a main-path weight layer at the first recorded step;
      ``median_update_ratio_last``: the median over those layers at the last;
    - ``dead_fraction``: mean over the ReLU layers of the fraction of dead
      channels at the last recorded step; ``max_dead_fraction``: the largest;
    - ``block_ratio``: median over residual blocks of ||branch|| / ||shortcut||
      at the last recorded step (NaN without residual blocks).

    ``statuses`` and ``diverged_steps`` (from the run records) add the outcome
    of each run. Comparisons: ``lower_loss`` (the variant with the lower final
    train loss; a NaN loss counts as worse than any number) and, with both
    variants, ``loss_gap`` = plain minus residual final train loss and
    ``val_accuracy_gap`` = residual minus plain final validation accuracy.
    """
    statuses = statuses or {}
    diverged_steps = diverged_steps or {}
    variants = variants_in(metrics)
    grads = weight_layers(stats, GRAD_NORM)
    updates = weight_layers(stats, UPDATE_RATIO)
    dead = relu_layers(stats)
    blocks = block_rows(stats, BLOCK_RATIO[1])
    finals = final_metrics(metrics, window=window, by="variant").set_index("variant")
    rows = {}
    for variant in variants:
        final = finals.loc[variant]
        steps = sorted(set(stats.loc[stats["variant"] == variant, "step"]))
        first_step, last_step = (steps[0], steps[-1]) if steps else (math.nan, math.nan)
        my_dead = _at(dead, variant, last_step)["value"]
        rows[variant] = {
            "status": statuses.get(variant),
            "steps": 0 if math.isnan(final["last_step"]) else int(final["last_step"]),
            "diverged_step": diverged_steps.get(variant),
            **{column: float(final[column]) for column in FINAL_COLUMNS},
            "first_stats_step": first_step,
            "last_stats_step": last_step,
            "grad_ratio_first": _first_over_last(_at(grads, variant, first_step)),
            "grad_ratio_last": _first_over_last(_at(grads, variant, last_step)),
            "max_update_ratio_first": _at(updates, variant, first_step)["value"].max(),
            "median_update_ratio_last": _at(updates, variant, last_step)["value"].median(),
            "dead_fraction": my_dead.mean() if len(my_dead) else math.nan,
            "max_dead_fraction": my_dead.max() if len(my_dead) else math.nan,
            "block_ratio": _at(blocks, variant, last_step)["value"].median(),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS))
    table.index.name = "variant"
    comparison = _compare(table)
    return Findings(table, comparison, _sentences(table, comparison, window))


def _at(rows: pd.DataFrame, variant: str, step: float) -> pd.DataFrame:
    return rows[(rows["variant"] == variant) & (rows["step"] == step)]


def _first_over_last(rows: pd.DataFrame) -> float:
    """Value of the lowest-numbered layer over that of the highest-numbered one."""
    if rows.empty:
        return math.nan
    ordered = rows.sort_values("layer")["value"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(ordered[0]) / np.float64(ordered[-1]))


def _compare(table: pd.DataFrame) -> dict[str, Any]:
    if table.empty:
        return {}
    loss = table["final_train_loss"].astype(float)
    ranked = loss.fillna(math.inf)
    comparison: dict[str, Any] = {"lower_loss": ranked.idxmin()}
    if {"residual", "plain"} <= set(table.index):
        comparison["loss_gap"] = loss["plain"] - loss["residual"]
        accuracy = table["final_val_accuracy"].astype(float)
        comparison["val_accuracy_gap"] = accuracy["residual"] - accuracy["plain"]
    return comparison


def _number(value: float, digits: int = 3) -> str:
    """A value for a sentence: 3 significant digits, 'n/a' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _integer(value: Any) -> str:
    """A step count for a sentence (stored as float where a column holds NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _signed_gap(comparison: dict[str, Any], variant: str) -> float:
    """Validation accuracy of ``variant`` minus the other's."""
    gap = comparison["val_accuracy_gap"]
    return gap if variant == "residual" else -gap


def _accuracy_clause(gap: float) -> str:
    """'; its validation accuracy was N percentage points higher/lower.' (just '.' when unknown)."""
    if math.isnan(gap):
        return "."
    return f"; its validation accuracy was {_number(100 * abs(gap))} percentage points {'higher' if gap >= 0 else 'lower'}."


def _sentences(table: pd.DataFrame, comparison: dict[str, Any], window: int) -> list[str]:
    sentences = []
    for variant, row in table.iterrows():
        if row["status"] == "diverged":
            sentences.append(f"The {variant} network diverged: its loss became non-finite at step "
                             f"{_integer(row['diverged_step'])}.")
    for variant, row in table.iterrows():
        sentences.append(
            f"The {variant} network ended with a train loss of {_number(row['final_train_loss'])} "
            f"(mean of its last {_integer(min(window, row['steps']))} steps), train accuracy "
            f"{_percent(row['final_train_accuracy'])} and validation accuracy "
            f"{_percent(row['final_val_accuracy'])} after {_integer(row['steps'])} steps.")
    if "loss_gap" in comparison:
        lower = comparison["lower_loss"]
        other = "plain" if lower == "residual" else "residual"
        if math.isfinite(comparison["loss_gap"]):
            sentences.append(
                f"The {lower} network reached the lower train loss: {_number(table.at[lower, 'final_train_loss'])} "
                f"against {_number(table.at[other, 'final_train_loss'])}, a gap of "
                f"{_number(abs(comparison['loss_gap']))}" + _accuracy_clause(_signed_gap(comparison, lower)))
        else:
            sentences.append(f"The {lower} network reached the lower train loss; the {other} network's "
                             f"final loss is not finite.")
    for variant, row in table.iterrows():
        if math.isnan(row["grad_ratio_first"]):
            continue
        sentences.append(
            f"In the {variant} network the first layer's weight-gradient norm was "
            f"{_number(row['grad_ratio_first'])} times the last layer's at step {_integer(row['first_stats_step'])} "
            f"and {_number(row['grad_ratio_last'])} times at step {_integer(row['last_stats_step'])}.")
    for variant, row in table.iterrows():
        if math.isnan(row["max_update_ratio_first"]):
            continue
        sentences.append(
            f"In the {variant} network the update at step {_integer(row['first_stats_step'])} changed a layer's "
            f"weights by up to {_number(row['max_update_ratio_first'])} times their norm; at step "
            f"{_integer(row['last_stats_step'])} the median layer's update-to-weight ratio was "
            f"{_number(row['median_update_ratio_last'])}.")
    for variant, row in table.iterrows():
        if math.isnan(row["dead_fraction"]):
            continue
        sentences.append(
            f"At step {_integer(row['last_stats_step'])}, {_percent(row['dead_fraction'])} of the {variant} network's "
            f"ReLU channels were dead on average over its layers (at most {_percent(row['max_dead_fraction'])} "
            f"in one layer).")
    for variant, row in table.iterrows():
        if math.isnan(row["block_ratio"]):
            continue
        sentences.append(
            f"In the {variant} network the median block's branch output had {_number(row['block_ratio'])} "
            f"times the norm of its shortcut at step {_integer(row['last_stats_step'])}"
            + (": the blocks stay close to the identity." if row["block_ratio"] < 1 else "."))
    if not sentences:
        sentences.append("No metrics were recorded.")
    return sentences


def study_findings(result: Any, *, window: int = FINAL_WINDOW) -> Findings:
    """:func:`compute_findings` for an :class:`analysis.study.StudyResult`, run outcomes included."""
    return compute_findings(result.metrics, result.stats, statuses=result.statuses,
                            diverged_steps={v: r.get("diverged_step") for v, r in result.records.items()},
                            window=window)
