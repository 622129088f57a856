"""Figures of a depth study, residual beside plain, from tidy frames.

Every function takes the tidy ``metrics`` or ``stats`` frame of
:class:`analysis.study.StudyResult` (stored columns plus ``variant``) and
returns a titled, labelled :class:`matplotlib.figure.Figure` made without
pyplot, so nothing global changes and nothing is shown until the caller
displays it. Missing data (no statistics, no residual blocks, a run that
diverged after a few steps) gives a figure that says so instead of an error.

The row selections used by the figures are public too, so the findings are
computed from exactly the rows that are plotted: weight layers are the conv
and linear weights on the main path (projection shortcuts left out, so layer
``k`` is the ``k``-th weight layer of the depth count), numbered by the order
in which they ran in the forward pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

# Statistic names as the hook Monitor writes them (kind, stat); see analysis.hooks.statistics.
ACTIVATION = "activation"
ACTIVATION_STD = (ACTIVATION, "std")
DEAD_FRACTION = (ACTIVATION, "dead_fraction")
GRAD_NORM = ("param_grad", "norm")
UPDATE_RATIO = ("update", "ratio")
BLOCK_RATIO = ("block", "ratio")
WEIGHT_TYPES = ("Conv2d", "Linear")
NORM_TYPES = ("BatchNorm2d",)
RELU_TYPES = ("ReLU",)

VARIANT_ORDER = ("residual", "plain")
COLORS = {"residual": "#0072B2", "plain": "#D55E00"}
DEPTH_STEPS = 4
"""How many recorded steps the per-layer figures draw (first and last always among them)."""


# -- selecting rows ------------------------------------------------------------

def variants_in(frame: pd.DataFrame) -> list[str]:
    """The variants present, residual first, then plain, then any others by name."""
    present = list(dict.fromkeys(frame["variant"])) if "variant" in frame else []
    return [v for v in VARIANT_ORDER if v in present] + sorted(v for v in present if v not in VARIANT_ORDER)


def on_main_path(frame: pd.DataFrame) -> pd.Series:
    """True for rows of modules outside a block's shortcut (projection conv and norm)."""
    return ~frame["module"].str.contains(r"(?:^|\.)shortcut(?:\.|$)", regex=True)


def layer_rows(stats: pd.DataFrame, kind_stat: tuple[str, str], module_types: Sequence[str], *,
               param: str | None = None) -> pd.DataFrame:
    """Rows of one statistic for main-path modules of the given types, with a ``layer`` column.

    ``layer`` numbers the modules of each variant 1, 2, ... in forward order
    (by their smallest recorded ``index``), so it is the depth position. Only
    the first call of a module is kept, and with ``param`` only that parameter.
    """
    kind, stat = kind_stat
    rows = stats[(stats["kind"] == kind) & (stats["stat"] == stat) & stats["module_type"].isin(module_types)
                 & (stats["call"] == 0)]
    if param is not None:
        rows = rows[rows["param"] == param]
    rows = rows[on_main_path(rows)] if len(rows) else rows
    if rows.empty:
        return rows.assign(layer=pd.Series(dtype="int64"))
    first_index = rows.groupby(["variant", "module"])["index"].min()
    layer = first_index.groupby(level="variant").rank(method="first").astype("int64").rename("layer")
    return rows.join(layer, on=["variant", "module"]).sort_values(["variant", "step", "layer"])


def weight_layers(stats: pd.DataFrame, kind_stat: tuple[str, str]) -> pd.DataFrame:
    """Per-parameter statistic of each main-path conv/linear weight (e.g. GRAD_NORM, UPDATE_RATIO)."""
    return layer_rows(stats, kind_stat, WEIGHT_TYPES, param="weight")


def response_layers(stats: pd.DataFrame, kind_stat: tuple[str, str]) -> pd.DataFrame:
    """Activation statistic of the layer responses He et al. (2015, Fig. 7) plot.

    Outputs of the batch-norm layers (after normalisation, before the addition
    and the ReLU); without batch norm, the conv outputs.
    """
    rows = layer_rows(stats, kind_stat, NORM_TYPES)
    with_norm = set(rows["variant"])
    convs = layer_rows(stats, kind_stat, ("Conv2d",))
    return pd.concat([rows, convs[~convs["variant"].isin(with_norm)]], ignore_index=True)


def relu_layers(stats: pd.DataFrame, kind_stat: tuple[str, str] = DEAD_FRACTION) -> pd.DataFrame:
    """Activation statistic of every ReLU on the main path."""
    return layer_rows(stats, kind_stat, RELU_TYPES)


def block_rows(stats: pd.DataFrame, stat: str = BLOCK_RATIO[1]) -> pd.DataFrame:
    """Block statistics (residual blocks only), with ``block`` numbering them 1, 2, ... in forward order."""
    rows = stats[(stats["kind"] == BLOCK_RATIO[0]) & (stats["stat"] == stat) & (stats["call"] == 0)]
    if rows.empty:
        return rows.assign(block=pd.Series(dtype="int64"))
    first_index = rows.groupby(["variant", "module"])["index"].min()
    block = first_index.groupby(level="variant").rank(method="first").astype("int64").rename("block")
    return rows.join(block, on=["variant", "module"]).sort_values(["variant", "step", "block"])


def pick_steps(steps: Sequence[int] | pd.Series, n: int = DEPTH_STEPS) -> list[int]:
    """Up to ``n`` of the recorded steps, evenly spread, always the first and the last."""
    unique = sorted(set(int(s) for s in steps))
    if len(unique) <= n:
        return unique
    picks = np.linspace(0, len(unique) - 1, n).round().astype(int)
    return [unique[i] for i in sorted(set(picks))]


# -- figures -------------------------------------------------------------------

def training_curves(metrics: pd.DataFrame, *, smooth: int | None = None) -> Figure:
    """Train loss and accuracy per step, validation loss and accuracy, one colour per variant.

    Per-step train values are drawn faintly with a rolling mean over ``smooth``
    steps on top (default: a 25th of the run, at least 1).
    """
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    fig.suptitle("Training curves: residual vs plain")
    for row, metric in enumerate(("loss", "accuracy")):
        for col, split in enumerate(("train", "val")):
            ax = axes[row, col]
            name = "validation" if split == "val" else "train"
            ax.set_title(f"{name} {metric}")
            ax.set_xlabel("step")
            ax.set_ylabel(metric)
            drawn = False
            for variant in variants_in(metrics):
                series = metric_series(metrics, variant, split, metric)
                if series.empty:
                    continue
                drawn = True
                color = COLORS.get(variant)
                if split == "train":
                    window = smooth or max(1, len(series) // 25)
                    ax.plot(series.index, series.values, color=color, alpha=0.25, linewidth=0.8)
                    rolling = series.rolling(window, min_periods=1).mean()
                    ax.plot(rolling.index, rolling.values, color=color, label=f"{variant} (mean of {window})")
                else:
                    ax.plot(series.index, series.values, color=color, marker="o", label=variant)
            if drawn:
                ax.legend()
                if metric == "loss":
                    _log_if_wide(ax, metrics[(metrics["split"] == split) & (metrics["metric"] == "loss")]["value"])
            else:
                _no_data(ax, f"no {name} {metric} recorded")
    return fig


def grad_norm_by_depth(stats: pd.DataFrame, steps: Sequence[int] | None = None) -> Figure:
    """Weight-gradient norm of each conv/linear layer against its depth position, log scale."""
    return _by_depth(weight_layers(stats, GRAD_NORM), steps, log=True,
                     title="Weight-gradient norm per layer", ylabel="||dL/dW|| (log scale)",
                     xlabel="weight layer (forward order)")


def activation_std_by_depth(stats: pd.DataFrame, steps: Sequence[int] | None = None) -> Figure:
    """Standard deviation of each layer's response against depth (cf. He et al. 2015, Fig. 7)."""
    rows = response_layers(stats, ACTIVATION_STD)
    if set(rows["module_type"]) <= set(NORM_TYPES):
        where, layer = "batch-norm outputs, before addition and ReLU", "norm layer"
    else:
        where, layer = "batch-norm outputs, or conv outputs without batch norm", "norm or conv layer"
    return _by_depth(rows, steps, log=False, title=f"Layer response std ({where})",
                     ylabel="std of response", xlabel=f"{layer} (forward order)")


def dead_fraction_by_depth(stats: pd.DataFrame, steps: Sequence[int] | None = None) -> Figure:
    """Fraction of dead ReLU channels (zero for every input of the batch) per ReLU layer."""
    return _by_depth(relu_layers(stats), steps, log=False, title="Dead-unit fraction per ReLU",
                     ylabel="fraction of channels zero on the whole batch", xlabel="ReLU (forward order)",
                     ylim=(-0.02, 1.02))


def update_ratio_heatmap(stats: pd.DataFrame) -> Figure:
    """Update-to-weight ratio ||dW|| / ||W|| of each conv/linear weight: layer against step.

    One panel per variant on a shared logarithmic colour scale; each panel's
    array is ``update_ratio_pivot(rows, variant)``.
    """
    rows = weight_layers(stats, UPDATE_RATIO)
    variants = variants_in(rows)
    fig = Figure(figsize=(5.5 * max(1, len(variants)), 5), layout="constrained")
    fig.suptitle("Update-to-weight ratio per layer and step")
    if not variants:
        ax = fig.subplots()
        _label(ax, "step", "weight layer (forward order)")
        _no_data(ax, "no update statistics recorded")
        return fig
    axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True))
    values = rows["value"].to_numpy()
    positive = values[np.isfinite(values) & (values > 0)]
    norm = LogNorm(positive.min(), positive.max()) if positive.size else None
    mesh = None
    for ax, variant in zip(axes, variants):
        pivot = update_ratio_pivot(rows, variant)
        mesh = ax.pcolormesh(_edges(pivot.columns.to_numpy()), _edges(pivot.index.to_numpy()),
                             np.ma.masked_invalid(pivot.to_numpy()), norm=norm, cmap="viridis", shading="flat")
        ax.set_title(variant)
        _label(ax, "step", "weight layer (forward order)")
    axes[0].invert_yaxis()
    fig.colorbar(mesh, ax=list(axes), label="||update|| / ||weight|| (log scale)")
    return fig


def update_ratio_pivot(rows: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Layers (rows, forward order) by recorded steps (columns) of one variant's ratios."""
    mine = rows[rows["variant"] == variant]
    return mine.pivot_table(index="layer", columns="step", values="value", aggfunc="first").sort_index()


def block_ratio_by_depth(stats: pd.DataFrame, steps: Sequence[int] | None = None) -> Figure:
    """Per residual block: ||branch output|| / ||shortcut output|| against block position, log scale."""
    rows = block_rows(stats).rename(columns={"block": "layer"})
    fig = _by_depth(rows, steps, log=True, title="Residual branch norm / shortcut norm per block",
                    ylabel="||branch|| / ||shortcut|| (log scale)", xlabel="residual block (forward order)",
                    empty="no residual blocks recorded (plain networks have no shortcut)")
    for ax in fig.axes:
        if ax.has_data():
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    return fig


# -- helpers -------------------------------------------------------------------

def _by_depth(rows: pd.DataFrame, steps: Sequence[int] | None, *, log: bool, title: str, ylabel: str,
              xlabel: str, ylim: tuple[float, float] | None = None,
              empty: str = "no statistics recorded (stats_every=0?)") -> Figure:
    """One panel per variant: the ``value`` of each ``layer``, one line per picked step."""
    variants = variants_in(rows)
    fig = Figure(figsize=(5.5 * max(1, len(variants)), 4.2), layout="constrained")
    fig.suptitle(title)
    if not variants:
        ax = fig.subplots()
        _label(ax, xlabel, ylabel)
        _no_data(ax, empty)
        return fig
    axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True))
    for ax, variant in zip(axes, variants):
        mine = rows[rows["variant"] == variant]
        chosen = list(steps) if steps is not None else pick_steps(mine["step"])
        for i, step in enumerate(chosen):
            line = mine[mine["step"] == step].sort_values("layer")
            if line.empty:
                continue
            values = line["value"].to_numpy(dtype=float)
            values = np.where(np.isfinite(values) & (values > 0 if log else True), values, np.nan)
            ax.plot(line["layer"].to_numpy(), values, marker=".", color=_step_color(i / max(1, len(chosen) - 1)),
                    label=f"step {step}")
        ax.set_title(variant)
        _label(ax, xlabel, ylabel)
        if log and ax.has_data():
            ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        if ax.has_data():
            ax.legend(fontsize="small")
        else:
            _no_data(ax, "no rows at the chosen steps")
    return fig


def metric_series(metrics: pd.DataFrame, variant: str, split: str, metric: str) -> pd.Series:
    """One variant's values of one metric, indexed by step."""
    rows = metrics[(metrics["variant"] == variant) & (metrics["split"] == split) & (metrics["metric"] == metric)]
    return rows.set_index("step")["value"].sort_index()


def _log_if_wide(ax, values: pd.Series) -> None:
    """Log scale when finite positive values span more than a decade (an early spike, a diverging run)."""
    finite = values[np.isfinite(values) & (values > 0)]
    if len(finite) and finite.max() / finite.min() > 10:
        ax.set_yscale("log")


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centers (midpoints; a width of 1 for a single center)."""
    centers = np.asarray(centers, dtype=float)
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mids = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mids[0]], mids, [2 * centers[-1] - mids[-1]]])


def _step_color(position: float) -> tuple[float, float, float, float]:
    """Colour of a step line; ``position`` runs from 0 (first step drawn) to 1 (last)."""
    return colormaps["viridis"](0.1 + 0.75 * position)


def _label(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
