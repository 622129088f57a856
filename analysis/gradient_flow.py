"""Gradient flow through depth, defined once for findings, summaries and studies.

The layers are the **main-path convolutions in forward order** (the stem conv
is layer 1; projection shortcuts are left out; the classifier, a linear layer
that no batch norm follows, is reported on its own). For one recorded step,
with ``g_l = ||dL/dW_l||`` the weight-gradient norm of layer ``l = 1..L``:

- **profile**: ``g_1, ..., g_L``;
- **first-to-last ratio**: ``g_1 / g_L`` (stem conv over the last main-path conv);
- **growth factor**: ``exp(-b)`` where ``log g_l = a + b * l`` is the
  least-squares line over the layer index: how much the norm is multiplied
  per layer on the way back *towards the input* (above 1: it grows towards the
  input); ``r2`` is that fit's coefficient of determination;
- **scale-free variant**: the same with ``g_l * ||W_l||`` per layer. Batch
  norm makes the loss invariant to the scale of the weights before it, so
  ``g_l`` alone scales as ``1 / ||W_l||``; the product does not.

Wording (:func:`direction`) comes from the fitted change over the whole
network, ``factor ** (L - 1)``: above :data:`FLAT_BAND` it "grows towards the
input", below ``1 / FLAT_BAND`` it "shrinks towards the input", otherwise it
is "about flat". Nothing here presumes vanishing or exploding gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.frames import GRAD_NORM, WEIGHT_NORM, weight_layers

FLAT_BAND = 2.0
"""A fitted end-to-end change within this factor either way is called "about flat"."""

GROWS = "grows towards the input"
SHRINKS = "shrinks towards the input"
FLAT = "about flat"

CONV_TYPES = ("Conv2d",)
CLASSIFIER_TYPES = ("Linear",)
FLOW_COLUMNS = ("step", "n_layers", "ratio", "growth", "r2", "scaled_ratio", "scaled_growth", "scaled_r2",
                "classifier_grad_norm", "direction", "scaled_direction")


@dataclass(frozen=True)
class GrowthFit:
    """A geometric fit of a per-layer profile: ``factor`` per layer towards the input, fit ``r2``."""

    factor: float
    r2: float
    n_layers: int

    @property
    def end_to_end(self) -> float:
        """The fitted change from the last layer back to the first: ``factor ** (n_layers - 1)``."""
        return self.factor ** (self.n_layers - 1) if self.n_layers >= 2 else math.nan


def fit_growth(values: Sequence[float]) -> GrowthFit:
    """Least-squares fit of ``log value`` on layer index (1, 2, ...), as a factor per layer towards the input.

    NaN (with ``n_layers`` as given) when fewer than two layers are given or
    any value is not finite and positive: a fit that skipped layers would
    silently describe another network. A perfectly flat profile has ``r2`` 1.
    """
    y = np.asarray(values, dtype=np.float64)
    n = len(y)
    if n < 2 or not np.all(np.isfinite(y) & (y > 0)):
        return GrowthFit(math.nan, math.nan, n)
    x = np.arange(1, n + 1, dtype=np.float64)
    log_y = np.log(y)
    slope, intercept = np.polyfit(x, log_y, 1)
    residual = log_y - (intercept + slope * x)
    total = float(((log_y - log_y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else 1.0
    return GrowthFit(float(np.exp(-slope)), r2, n)


def first_to_last(values: Sequence[float]) -> float:
    """``values[0] / values[-1]``; NaN with fewer than two values."""
    y = np.asarray(values, dtype=np.float64)
    if len(y) < 2:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(y[0] / y[-1])


def direction(fit: GrowthFit) -> str:
    """"grows towards the input", "shrinks towards the input" or "about flat" (see :data:`FLAT_BAND`); "" if unknown."""
    change = fit.end_to_end
    if not math.isfinite(change):
        return ""
    if change > FLAT_BAND:
        return GROWS
    if change < 1 / FLAT_BAND:
        return SHRINKS
    return FLAT


def profiles(stats: pd.DataFrame, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Per-layer gradient-flow profile of every recorded step, from a tidy statistics frame.

    One row per ``keys`` group, step and main-path conv: ``layer`` (1, 2, ...
    in forward order, by the module's smallest recorded ``index``),
    ``module``, ``grad_norm``, ``weight_norm`` and ``scaled`` (their product;
    NaN where the weight norm was not recorded).
    """
    keys = list(keys)
    columns = [*keys, "step", "layer", "module", "grad_norm", "weight_norm", "scaled"]
    grads = weight_layers(stats, GRAD_NORM, module_types=CONV_TYPES, keys=keys)
    if grads.empty:
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in columns})
    weights = weight_layers(stats, WEIGHT_NORM, module_types=CONV_TYPES, keys=keys)
    weights = weights[[*keys, "step", "module", "value"]]
    rows = grads[[*keys, "step", "layer", "module", "value"]]
    rows = rows.rename(columns={"value": "grad_norm"}).merge(
        weights.rename(columns={"value": "weight_norm"}), on=[*keys, "step", "module"], how="left")
    rows["scaled"] = rows["grad_norm"] * rows["weight_norm"]
    return rows.sort_values([*keys, "step", "layer"]).reset_index(drop=True)[columns]


def flow_table(stats: pd.DataFrame, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """One row per ``keys`` group and recorded step: ratio, growth factor, fit and wording (module docstring).

    Columns: ``keys`` then :data:`FLOW_COLUMNS`; ``scaled_*`` use ``g * ||W||``;
    ``classifier_grad_norm`` is the classifier's weight-gradient norm at that step.
    """
    keys = list(keys)
    classifier = weight_layers(stats, GRAD_NORM, module_types=CLASSIFIER_TYPES, keys=keys)
    classifier = classifier.groupby([*keys, "step"])["value"].first()
    rows = []
    for group, profile in profiles(stats, keys).groupby([*keys, "step"], sort=True):
        grad, scaled = profile["grad_norm"].to_numpy(), profile["scaled"].to_numpy()
        fit, scaled_fit = fit_growth(grad), fit_growth(scaled)
        rows.append({**dict(zip([*keys, "step"], group)), "n_layers": len(grad),
                     "ratio": first_to_last(grad), "growth": fit.factor, "r2": fit.r2,
                     "scaled_ratio": first_to_last(scaled), "scaled_growth": scaled_fit.factor,
                     "scaled_r2": scaled_fit.r2, "classifier_grad_norm": float(classifier.get(group, math.nan)),
                     "direction": direction(fit), "scaled_direction": direction(scaled_fit)})
    return pd.DataFrame(rows, columns=[*keys, *FLOW_COLUMNS])


def at_ends(table: pd.DataFrame, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """The rows of :func:`flow_table` at each group's first recorded step (``end='init'``) and last (``'final'``)."""
    keys = list(keys)
    if table.empty:
        return table.assign(end=pd.Series(dtype=object))
    ordered = table.sort_values([*keys, "step"])
    first = ordered.groupby(keys, sort=True).head(1).assign(end="init")
    last = ordered.groupby(keys, sort=True).tail(1).assign(end="final")
    return pd.concat([first, last], ignore_index=True).sort_values([*keys, "step"], kind="stable").reset_index(drop=True)
