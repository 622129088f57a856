"""Figures of a depth study, residual beside plain, drawn by seaborn from tidy frames.

Every function takes the tidy frames of :class:`analysis.study.StudyResult`
(with ``variant``, ``seed`` and ``run_id`` columns) and returns a titled,
labelled :class:`matplotlib.figure.Figure` made without pyplot, so nothing
global changes and nothing is shown until the caller displays it. Lines are
the mean over seeds and the band their range (min to max), computed by
:func:`over_seeds`, one colour per variant from :data:`analysis.frames.PALETTE`. Missing data gives a figure
that says so instead of an error.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn.objects as so
from matplotlib.figure import Figure

from analysis import gradient_flow
from analysis.frames import (BLOCK_RATIO, PALETTE, UPDATE_RATIO, block_rows, relu_layers, variants_in,
                             weight_layers)

SEED_BAND = ("pi", 100)
"""Band around each mean line: the range over seeds (0th to 100th percentile)."""
RUN_KEYS = ("variant", "seed", "run_id")
END_LABELS = {"init": "first recorded step", "final": "last recorded step"}
WIDTH = 10.0
"""Figure width in inches: fits a report page."""


def seed_plot(frame: pd.DataFrame, x: str, y: str, *, title: str, xlabel: str, ylabel: str,
              col: str | None = None, row: str | None = None, log_y: bool = False, height: float = 3.6,
              marker: bool = True, empty: str = "no data recorded") -> Figure:
    """Mean of ``y`` over seeds against ``x`` per variant, with the seed range as a band.

    Non-finite values (and non-positive ones on a log axis) are left out.
    """
    ncols = frame[col].nunique() if col and len(frame) else 1
    nrows = frame[row].nunique() if row and len(frame) else 1
    fig = Figure(figsize=(WIDTH if ncols > 1 else WIDTH * 0.6, height * nrows), layout="constrained")
    values = frame[y].astype(float) if len(frame) else pd.Series(dtype=float)
    keep = np.isfinite(values) & ((values > 0) if log_y else True)
    frame = frame[keep]
    if frame.empty:
        ax = fig.subplots()
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="grey")
        return fig
    palette = {variant: PALETTE.get(variant, "grey") for variant in variants_in(frame)}
    summary = over_seeds(frame, x, y, [name for name in ("variant", col, row) if name], log=log_y)
    plot = (so.Plot(summary, x=x, y="mean", ymin="band_min", ymax="band_max", color="variant")
            .add(so.Line(marker="." if marker else ""))
            .add(so.Band(alpha=0.2))
            .scale(color=so.Nominal(palette, order=list(palette)))
            .label(x=xlabel, y=ylabel, color="variant"))
    if col or row:
        plot = plot.facet(col=col, row=row)
    if log_y:
        plot = plot.scale(y="log")
    plot.on(fig).plot()
    fig.suptitle(title)
    return fig


def over_seeds(frame: pd.DataFrame, x: str, y: str, groups: list[str], *, log: bool = False) -> pd.DataFrame:
    """Mean, min and max of ``y`` over the runs (seeds) at each ``x`` of each group: what a seed plot draws.

    The mean is the arithmetic mean on every axis, as in ``summary.json``;
    groups keep the order of their first row (the facets' order). With ``log``, the band's bounds come as ``band_min``/``band_max`` in log10:
    seaborn 0.13 maps a Band's ``ymin``/``ymax`` back from a log scale
    without mapping them onto it first, so they must be given in its space.
    """
    summary = frame.groupby([*groups, x], observed=True, sort=False)[y].agg(["mean", "min", "max"]).reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        return summary.assign(band_min=np.log10(summary["min"]) if log else summary["min"],
                              band_max=np.log10(summary["max"]) if log else summary["max"])


def _by_end(frame: pd.DataFrame, keys: tuple[str, ...] = RUN_KEYS) -> pd.DataFrame:
    """Rows at each run's first and last recorded step, with ``end`` naming which."""
    if frame.empty:
        return frame.assign(end=pd.Series(dtype=object))
    first = frame.groupby(list(keys))["step"].transform("min")
    last = frame.groupby(list(keys))["step"].transform("max")
    ends = [frame[frame["step"] == first].assign(end=END_LABELS["init"]),
            frame[frame["step"] == last].assign(end=END_LABELS["final"])]
    return pd.concat(ends, ignore_index=True)


def training_curves(metrics: pd.DataFrame, *, smooth: int | None = None) -> Figure:
    """Train loss and accuracy (a rolling mean over ``smooth`` steps per seed; default a 25th of the run),
    validation loss and accuracy, against step."""
    rows = metrics[metrics["metric"].isin(["loss", "accuracy"]) & metrics["split"].isin(["train", "val"])].copy()
    if len(rows):
        window = smooth or max(1, int(rows["step"].max()) // 25)
        train = rows["split"] == "train"
        rows.loc[train, "value"] = (rows[train].sort_values("step").groupby(["run_id", "metric"])["value"]
                                    .transform(lambda s: s.rolling(window, min_periods=1).mean()))
        rows["panel"] = rows["split"].map({"train": f"train (rolling mean of {window})", "val": "validation"})
    return _curves(rows)


def _curves(rows: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(WIDTH, 6.4), layout="constrained")
    fig.suptitle("Training curves: residual vs plain (line: mean over seeds; band: range over seeds)")
    if rows.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
        return fig
    palette = {variant: PALETTE.get(variant, "grey") for variant in variants_in(rows)}
    summary = over_seeds(rows[np.isfinite(rows["value"].astype(float))], "step", "value", ["variant", "panel", "metric"])
    (so.Plot(summary, x="step", y="mean", ymin="band_min", ymax="band_max", color="variant")
     .facet(col="panel", row="metric")
     .share(y=False)
     .add(so.Line())
     .add(so.Band(alpha=0.2))
     .scale(color=so.Nominal(palette, order=list(palette)))
     .label(x="step", y="", color="variant")
     .on(fig).plot())
    return fig


def grad_norm_by_layer(stats: pd.DataFrame) -> Figure:
    """Weight-gradient norm of each main-path conv against its position, at the first and last recorded step.

    Top: ``||dL/dW||``; bottom: the scale-free ``||dL/dW|| * ||W||``
    (:mod:`analysis.gradient_flow`). Log scale; the input is on the left.
    """
    profiles = gradient_flow.profiles(stats, keys=RUN_KEYS)
    long = profiles.melt(id_vars=[*RUN_KEYS, "step", "layer"], value_vars=["grad_norm", "scaled"],
                         var_name="quantity", value_name="value")
    long["quantity"] = long["quantity"].map({"grad_norm": "||dL/dW||", "scaled": "||dL/dW|| x ||W||"})
    return seed_plot(_by_end(long), "layer", "value", col="end", row="quantity", log_y=True,
                     title="Gradient flow: per-layer weight-gradient norm, input on the left",
                     xlabel="main-path conv (forward order)", ylabel="norm (log scale)",
                     empty="no gradient statistics recorded (stats_every=0?)")


def response_std_by_layer(responses: pd.DataFrame) -> Figure:
    """Std of each layer's response in the trained network, eval mode (He et al. 2015, Fig. 7)."""
    return seed_plot(responses, "layer", "std", title="Layer responses of the trained networks (eval mode, "
                     "fixed validation batch): batch-norm outputs, or conv outputs without batch norm",
                     xlabel="layer (forward order)", ylabel="std of response",
                     empty="no trained weights to measure (runs trained before model.pt was saved)")


def dead_fraction_by_layer(stats: pd.DataFrame) -> Figure:
    """Fraction of dead ReLU channels (zero for every input of the batch) per ReLU, first and last recorded step."""
    rows = relu_layers(stats, keys=RUN_KEYS)
    return seed_plot(_by_end(rows), "layer", "value", col="end", title="Dead-unit fraction per ReLU",
                     xlabel="ReLU (forward order)", ylabel="fraction of channels zero on the whole batch",
                     empty="no activation statistics recorded")


def update_ratio_by_step(stats: pd.DataFrame, metrics: pd.DataFrame) -> Figure:
    """Median over main-path weight layers of ||dW|| / ||W|| per recorded step, raw and divided by the learning rate.

    The raw ratio falls with the schedule's learning rate; divided by it, what
    is left is how large the gradient step is relative to the weights.
    """
    rows = weight_layers(stats, UPDATE_RATIO, keys=RUN_KEYS)
    median = rows.groupby([*RUN_KEYS, "step"], as_index=False)["value"].median()
    lr = metrics[(metrics["split"] == "train") & (metrics["metric"] == "lr")][["run_id", "step", "value"]]
    median = median.merge(lr.rename(columns={"value": "lr"}), on=["run_id", "step"], how="left")
    long = pd.concat([median.assign(quantity="||dW|| / ||W||"),
                      median.assign(value=median["value"] / median["lr"], quantity="(||dW|| / ||W||) / lr")])
    return seed_plot(long, "step", "value", col="quantity", log_y=True, marker=False,
                     title="Update size relative to the weights (median layer)", xlabel="step",
                     ylabel="ratio (log scale)", empty="no update statistics recorded")


def block_ratio_by_depth(stats: pd.DataFrame) -> Figure:
    """Per residual block: ||branch output|| / ||shortcut output||, first and last recorded step, log scale."""
    rows = block_rows(stats, BLOCK_RATIO[1], keys=RUN_KEYS)
    fig = seed_plot(_by_end(rows), "block", "value", col="end", log_y=True,
                    title="Residual branch norm / shortcut norm per block", xlabel="residual block (forward order)",
                    ylabel="||branch|| / ||shortcut|| (log scale)",
                    empty="no residual blocks recorded (plain networks have no shortcut)")
    for ax in fig.axes:
        if ax.has_data():
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    return fig
