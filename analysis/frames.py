"""Tidy selections and shared definitions that plots, findings and summaries read from.

One place for: the variant order and palette every page uses; which rows of a
statistics frame are the main-path weight layers, responses, ReLUs and
blocks (numbered in forward order); a run's final numbers; the settings that
define a configuration (everything but the seed); and how a value is
summarised over seeds (:func:`spread`) and when a comparison holds
(:func:`holds_for_every_seed`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Iterable

import numpy as np
import pandas as pd

VARIANT_ORDER = ("residual", "plain")
VARIANTS = ("both", *VARIANT_ORDER)
"""The values of a study's ``variants`` parameter: both networks, or one."""
PALETTE = {"residual": "#0072B2", "plain": "#D55E00"}
"""Colour of each variant on every page (colour-blind safe)."""

# Statistic names as the hook Monitor writes them (kind, stat); see analysis.hooks.statistics.
ACTIVATION_STD = ("activation", "std")
DEAD_FRACTION = ("activation", "dead_fraction")
GRAD_NORM = ("param_grad", "norm")
WEIGHT_NORM = ("weight", "norm")
UPDATE_RATIO = ("update", "ratio")
BLOCK_RATIO = ("block", "ratio")
WEIGHT_TYPES = ("Conv2d", "Linear")
NORM_TYPES = ("BatchNorm2d",)
RELU_TYPES = ("ReLU",)

TRAIN_WINDOW = 10
"""Final train loss and accuracy: the mean over this many last recorded train steps (one batch is noisy)."""
FINAL_COLUMNS = ("final_train_loss", "final_train_accuracy", "final_val_loss", "final_val_accuracy")

NOT_SETTINGS = ("seed", "device", "threads", "data_root", "download", "stats_every", "val_every", "val_batches")
"""Config fields that do not define a configuration: the seed (what repeats average over) and
fields that change where, how often or on how much data things are measured, not what is trained."""


# -- variants ------------------------------------------------------------------

def variant_of(residual: Any) -> str | None:
    """'residual' or 'plain' from a config's ``residual`` flag (None when unknown)."""
    return {True: "residual", False: "plain"}.get(residual) if isinstance(residual, bool) else None


def variants_in(frame: pd.DataFrame) -> list[str]:
    """The variants present, residual first, then plain, then any others by name."""
    present = list(dict.fromkeys(frame["variant"].dropna())) if "variant" in frame else []
    return [v for v in VARIANT_ORDER if v in present] + sorted(v for v in present if v not in VARIANT_ORDER)


# -- statistics rows -----------------------------------------------------------

def on_main_path(frame: pd.DataFrame) -> pd.Series:
    """True for rows of modules outside a block's shortcut (projection conv and norm)."""
    return ~frame["module"].str.contains(r"(?:^|\.)shortcut(?:\.|$)", regex=True)


def layer_rows(stats: pd.DataFrame, kind_stat: tuple[str, str], module_types: Sequence[str], *,
               param: str | None = None, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Rows of one statistic for main-path modules of the given types, with a ``layer`` column.

    ``layer`` numbers the modules of each ``keys`` group (a run) 1, 2, ... in
    forward order (by their smallest recorded ``index``), so it is the depth
    position. Only the first call of a module is kept, and with ``param`` only
    that parameter.
    """
    kind, stat = kind_stat
    rows = stats[(stats["kind"] == kind) & (stats["stat"] == stat) & stats["module_type"].isin(module_types)
                 & (stats["call"] == 0)]
    if param is not None:
        rows = rows[rows["param"] == param]
    rows = rows[on_main_path(rows)] if len(rows) else rows
    return _numbered(rows, "layer", list(keys))


def weight_layers(stats: pd.DataFrame, kind_stat: tuple[str, str], *,
                  module_types: Sequence[str] = WEIGHT_TYPES, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Per-parameter statistic of each main-path conv/linear weight (e.g. GRAD_NORM, UPDATE_RATIO)."""
    return layer_rows(stats, kind_stat, module_types, param="weight", keys=keys)


def relu_layers(stats: pd.DataFrame, kind_stat: tuple[str, str] = DEAD_FRACTION, *,
                keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Activation statistic of every ReLU on the main path."""
    return layer_rows(stats, kind_stat, RELU_TYPES, keys=keys)


def block_rows(stats: pd.DataFrame, stat: str = BLOCK_RATIO[1], *, keys: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Block statistics (residual blocks only), with ``block`` numbering them 1, 2, ... in forward order."""
    rows = stats[(stats["kind"] == BLOCK_RATIO[0]) & (stats["stat"] == stat) & (stats["call"] == 0)]
    return _numbered(rows, "block", list(keys))


def _numbered(rows: pd.DataFrame, column: str, keys: list[str]) -> pd.DataFrame:
    if rows.empty:
        return rows.assign(**{column: pd.Series(dtype="int64")})
    first_index = rows.groupby([*keys, "module"])["index"].min()
    number = first_index.groupby(level=keys).rank(method="first").astype("int64").rename(column)
    return rows.join(number, on=[*keys, "module"]).sort_values([*keys, "step", column])


def pick_steps(steps: Iterable[int], n: int = 4) -> list[int]:
    """Up to ``n`` of the recorded steps, evenly spread, always the first and the last."""
    unique = sorted(set(int(s) for s in steps))
    if len(unique) <= n:
        return unique
    picks = np.linspace(0, len(unique) - 1, n).round().astype(int)
    return [unique[i] for i in sorted(set(picks))]


# -- final numbers -------------------------------------------------------------

def final_metrics(metrics: pd.DataFrame, *, window: int = TRAIN_WINDOW, by: str = "run_id") -> pd.DataFrame:
    """One row per run (``by``): ``last_step`` and the final numbers ``FINAL_COLUMNS``.

    Final train loss / accuracy: mean over the last ``window`` recorded train
    steps; a diverged run's non-finite last loss makes it non-finite, which is
    the truth. Final validation loss / accuracy: the value at the last
    validation step. NaN where a run recorded no such value.
    """
    if window < 1:
        raise ValueError(f"window: must be a positive number of steps, got {window!r}")
    rows = []
    for key, run in metrics.groupby(by, sort=True):
        train = run[run["split"] == "train"]
        val = run[run["split"] == "val"]
        row = {by: key, "last_step": train["step"].max() if len(train) else np.nan}
        for metric in ("loss", "accuracy"):
            series = train[train["metric"] == metric].sort_values("step")["value"]
            row[f"final_train_{metric}"] = series.iloc[-window:].mean(skipna=False) if len(series) else np.nan
            series = val[val["metric"] == metric].sort_values("step")["value"]
            row[f"final_val_{metric}"] = series.iloc[-1] if len(series) else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[by, "last_step", *FINAL_COLUMNS])


# -- configurations and seeds --------------------------------------------------

def setting_columns(runs: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    """The config ``fields`` that define a configuration (not :data:`NOT_SETTINGS`), present in ``runs``.

    ``residual`` is replaced by the ``variant`` column that names it.
    """
    columns = ["variant" if name == "residual" else name for name in fields if name not in NOT_SETTINGS]
    return [name for name in columns if name in runs.columns]


def varying_settings(runs: pd.DataFrame, settings: Sequence[str]) -> list[str]:
    """The ``settings`` that take more than one value across ``runs`` (lists compared as text)."""
    return [name for name in settings if runs[name].map(_hashable).nunique(dropna=False) > 1]


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, tuple, dict)) else value


def spread(values: Iterable[float]) -> dict[str, Any]:
    """Mean, sd (n >= 3 only, ddof=1), min, max, n and the values themselves, as plain floats.

    Non-finite values propagate: a diverged seed makes the mean non-finite, as
    it should. NaN stands for "missing" and becomes None in JSON.
    """
    array = np.asarray(list(values), dtype=np.float64)
    n = len(array)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0, "values": []}
    with np.errstate(invalid="ignore"):
        return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if n >= 3 else math.nan,
                "min": float(array.min()), "max": float(array.max()), "n": n,
                "values": [float(v) for v in array]}


def paired_by_seed(frame: pd.DataFrame, column: str) -> tuple[list[float], list[float]]:
    """Plain and residual values of ``column``, one pair per seed either variant ran (NaN where one did not),
    in seed order: what :func:`holds_for_every_seed` compares. Empty without both variants."""
    wide = frame.pivot_table(index="seed", columns="variant", values=column, aggfunc="first", dropna=False)
    wide = wide.dropna(how="all")
    if not {"plain", "residual"} <= set(wide.columns):
        return [], []
    return list(wide["plain"].astype(float)), list(wide["residual"].astype(float))


def holds_for_every_seed(left: Sequence[float], right: Sequence[float]) -> bool | None:
    """Whether ``left > right`` for every paired seed: True, False (``left <= right`` for every seed),
    or None (the order differs between seeds, or a value is missing: unresolved)."""
    pairs = list(zip(left, right, strict=True))
    if not pairs or any(not (np.isfinite(a) and np.isfinite(b)) for a, b in pairs):
        return None
    if all(a > b for a, b in pairs):
        return True
    if all(a <= b for a, b in pairs):
        return False
    return None


def to_json_value(value: Any) -> Any:
    """A value as plain JSON: NaN and inf as None, numpy scalars as Python numbers, containers recursively."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA:
        return None
    return value
