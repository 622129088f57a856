"""Cross-run tables and figures: depth, residual against plain, and gradient flow.

Everything here reads a runs folder (``<runs_dir>/<run_id>/``, see
:mod:`analysis.store`) and returns tidy DataFrames or matplotlib Figures, so
``notebooks/summary.ipynb`` stays a list of one-line calls and the HTML index
shows the same numbers as the summary notebook.

Definitions used throughout:

- final train loss / accuracy: mean over the last ``TRAIN_WINDOW`` recorded
  train steps (a single batch is noisy); a diverged run's non-finite last loss
  makes it non-finite, which is the truth.
- final validation loss / accuracy: the value at the last validation step
  (a full pass over the validation split, or its first ``val_batches``).
- gradient-norm ratio: see :func:`grad_norm_ratio`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.hooks.writer import PART_GLOB, SCHEMA
from analysis.store import STATS_DIR, list_runs, load_runs

TRAIN_WINDOW = 10
VARIANTS = ("plain", "residual")
VARIANT_COLORS = {"plain": "tab:red", "residual": "tab:blue"}
WEIGHT_LAYER_TYPES = ("Conv2d", "Linear")
GRAD_KIND = "param_grad"
GRAD_STAT = "norm"
WEIGHT_PARAM = "weight"
FINAL_COLUMNS = ("final_train_loss", "final_train_accuracy", "final_val_loss", "final_val_accuracy")
RATIO_COLUMNS = ("grad_step", "first_layer", "last_layer", "first_grad_norm", "last_grad_norm", "grad_norm_ratio")
STATUS_COLUMNS = ("run_id", "depth", "variant", "status", "steps_completed", "diverged_step", "final_train_loss",
                  "final_train_accuracy", "final_val_accuracy", "grad_norm_ratio", "error")


def load_metrics(runs_dir: str | Path) -> pd.DataFrame:
    """Every run's metrics: tidy ``run_id, step, split, metric, value`` (see :func:`analysis.store.load_runs`)."""
    df = load_runs(runs_dir)
    return df[["run_id", "step", "split", "metric", "value"]].reset_index(drop=True)


def final_metrics(metrics: pd.DataFrame, *, window: int = TRAIN_WINDOW, by: str = "run_id") -> pd.DataFrame:
    """One row per value of ``by`` (a run id, or a study's variant): the final numbers (module docstring).

    Columns: ``by``, ``last_step`` (last recorded train step) and
    ``FINAL_COLUMNS``; NaN where a run recorded no such value.
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


def read_grad_norms(stats_path: str | Path) -> pd.DataFrame:
    """Gradient norms of conv/linear weights from one run's ``stats.parquet``.

    Columns ``step, module, module_type, index, value``; empty when the run
    recorded no statistics (``stats_every=0``) or none of this kind. Reads
    only these rows from the part files, so long runs stay cheap.
    """
    columns = ["step", "module", "module_type", "index", "value"]
    parts = sorted(Path(stats_path).glob(PART_GLOB))
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=SCHEMA.field(name).type.to_pandas_dtype()) for name in columns})
    wanted = ((ds.field("kind") == GRAD_KIND) & (ds.field("stat") == GRAD_STAT) & (ds.field("param") == WEIGHT_PARAM)
              & ds.field("module_type").isin(list(WEIGHT_LAYER_TYPES)) & (ds.field("index") >= 0))
    table = ds.dataset([str(part) for part in parts], schema=SCHEMA, format="parquet").to_table(
        columns=columns, filter=wanted)
    return table.to_pandas()


def grad_norm_ratio(grad_norms: pd.DataFrame) -> dict[str, object]:
    """First-to-last-layer gradient-norm ratio of one run.

    ``grad_norm_ratio = ||dL/dW_first|| / ||dL/dW_last||`` where ``W_first``
    and ``W_last`` are the weights of the conv/linear modules with the smallest
    and largest forward index (the order modules ran in the forward pass, so
    the stem conv and the classifier), both taken at the last step recorded in
    ``stats.parquet`` (the largest step with such gradient-norm rows). Above 1
    the gradient grows towards the input (exploding); below 1 it shrinks
    (vanishing). ``grad_norms`` is :func:`read_grad_norms` output.

    Returns ``RATIO_COLUMNS`` as a dict; NaN/None where there are no statistics.
    """
    if grad_norms.empty:
        return {"grad_step": np.nan, "first_layer": None, "last_layer": None,
                "first_grad_norm": np.nan, "last_grad_norm": np.nan, "grad_norm_ratio": np.nan}
    step = grad_norms["step"].max()
    at_step = grad_norms[grad_norms["step"] == step].sort_values("index")
    first, last = at_step.iloc[0], at_step.iloc[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.float64(first["value"]) / np.float64(last["value"])
    return {"grad_step": int(step), "first_layer": first["module"], "last_layer": last["module"],
            "first_grad_norm": float(first["value"]), "last_grad_norm": float(last["value"]),
            "grad_norm_ratio": float(ratio)}


def run_table(runs_dir: str | Path, *, window: int = TRAIN_WINDOW) -> pd.DataFrame:
    """One row per run: config, status, error, final numbers and gradient-norm ratio.

    Adds ``variant`` ('residual' or 'plain') to :func:`analysis.store.list_runs`'
    columns, then ``last_step``, ``FINAL_COLUMNS`` and ``RATIO_COLUMNS``.
    Sorted by depth, variant and run id. Unreadable runs keep their row.
    """
    runs = list_runs(runs_dir)
    for column in ("run_id", "status", "error", "depth", "residual", "steps", "steps_completed",
                   "diverged_step", "path"):
        if column not in runs.columns:
            runs[column] = pd.Series(dtype=object)
    runs["variant"] = runs["residual"].map({True: "residual", False: "plain"})
    finals = final_metrics(load_metrics(runs_dir), window=window)
    runs = runs.merge(finals, on="run_id", how="left")
    ratios = [grad_norm_ratio(read_grad_norms(Path(path) / STATS_DIR)) for path in runs["path"]]
    runs = pd.concat([runs, pd.DataFrame(ratios, columns=list(RATIO_COLUMNS), index=runs.index)], axis=1)
    runs["depth"] = pd.to_numeric(runs["depth"], errors="coerce").astype("Int64")
    return runs.sort_values(["depth", "variant", "run_id"], na_position="last").reset_index(drop=True)


def count_table(runs: pd.DataFrame) -> pd.DataFrame:
    """How many runs of each variant and depth ended in each status."""
    if runs.empty:
        return pd.DataFrame(index=pd.Index([], name="variant"))
    counts = runs.groupby(["variant", "depth", "status"], dropna=False).size()
    return counts.unstack("status", fill_value=0).rename_axis(columns=None)


def status_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table's columns worth reading: status, final numbers, ratio and error ('' where none)."""
    table = runs[[column for column in STATUS_COLUMNS if column in runs.columns]].set_index("run_id")
    return table.assign(error=table["error"].fillna(""))


def with_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a depth and a variant that recorded train metrics (what the curves can show)."""
    return runs[runs["variant"].notna() & runs["depth"].notna() & runs["last_step"].notna()]


def depth_points(runs: pd.DataFrame, column: str, *, positive: bool = False) -> tuple[pd.DataFrame, str]:
    """The runs a plot against depth shows, with their ``column`` as ``value``, and a note on the others.

    Only complete runs are shown: a failed or diverged run stopped early, so
    its numbers are not comparable. Runs without a finite value (without a
    positive one where ``positive``, for log axes) are left out too.
    """
    values = _finite(runs[column])
    runs = runs.assign(value=values.where(values > 0) if positive else values)
    complete = (runs["status"] == "complete") & runs["variant"].notna() & runs["depth"].notna()
    shown = runs[complete & runs["value"].notna()]
    reasons = [f"{count} {status}" for status, count in
               runs.loc[~complete, "status"].fillna("unknown").value_counts().sort_index().items()]
    if without := int((complete & runs["value"].isna()).sum()):
        reasons.append(f"{without} complete without a value")
    note = f"Not shown: {', '.join(reasons)} (see the table of all runs)" if reasons else ""
    return shown, note


def plot_final_vs_depth(runs: pd.DataFrame) -> Figure:
    """Final train loss and accuracy of complete runs against depth, residual against plain.

    Each run is a point; the line joins the per-depth means. A note under the
    axes counts the runs left out (see :func:`depth_points`).
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, column, label in ((axes[0], "final_train_loss", "final train loss"),
                              (axes[1], "final_train_accuracy", "final train accuracy")):
        shown, note = depth_points(runs, column)
        _by_depth(ax, shown)
        ax.set(title=f"{label.capitalize()} against depth", xlabel="depth (weight layers)", ylabel=label)
    axes[0].set_yscale(_scale(depth_points(runs, "final_train_loss")[0]["value"]))
    fig.suptitle(f"Final training numbers (mean of the last {TRAIN_WINDOW} steps)")
    return _with_note(fig, note)


def plot_grad_ratio(runs: pd.DataFrame) -> Figure:
    """First-to-last-layer gradient-norm ratio of complete runs against depth (log scale).

    Residual against plain; the dotted line at 1 marks equal norms: above it
    gradients grow towards the input, below it they vanish.
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.set(title="Gradient-norm ratio, first to last weight layer", xlabel="depth (weight layers)",
           ylabel="||dL/dW_first|| / ||dL/dW_last||")
    shown, note = depth_points(runs, "grad_norm_ratio", positive=True)
    if shown.empty:
        ax.text(0.5, 0.5, "no gradient statistics from complete runs\n(runs trained with stats_every = 0 have none)",
                ha="center", va="center", transform=ax.transAxes)
    else:
        ax.axhline(1.0, color="0.5", linewidth=1, linestyle=":")
        _by_depth(ax, shown)
        ax.set_yscale("log")
    return _with_note(fig, note)


def plot_degradation(metrics: pd.DataFrame, runs: pd.DataFrame, *, smooth: int | None = None) -> Figure:
    """Training curves by depth, plain (left) against residual (right), as in He et al. 2015, Fig. 1 and 6.

    Every run with metrics is drawn, failed and diverged ones up to where they
    stopped. Error = 100 * (1 - accuracy). Dashed: train error, a trailing
    mean over ``smooth`` steps (default: 1/50 of the longest run, at least
    ``TRAIN_WINDOW``); solid: validation error. One color per depth, shared by
    both panels.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    runs = with_metrics(runs)
    accuracy = metrics[(metrics["metric"] == "accuracy") & metrics["run_id"].isin(runs["run_id"])]
    if smooth is None:
        smooth = max(TRAIN_WINDOW, int(accuracy["step"].max() // 50) if len(accuracy) else 1)
    depths = sorted(runs["depth"].unique())
    colors = dict(zip(depths, _depth_colors(len(depths))))
    for ax, variant in zip(axes, VARIANTS):
        ax.set(title=f"{variant} networks", xlabel="step", ylabel="error (%)")
        chosen = runs[runs["variant"] == variant]
        if chosen.empty:
            ax.text(0.5, 0.5, f"no {variant} runs", ha="center", va="center", transform=ax.transAxes)
            continue
        labelled = set()
        for run in chosen.itertuples():
            curves = accuracy[accuracy["run_id"] == run.run_id]
            train = curves[curves["split"] == "train"].sort_values("step")
            val = curves[curves["split"] == "val"].sort_values("step")
            train_error = 100 * (1 - _finite(train["value"]).rolling(smooth, min_periods=1).mean())
            ax.plot(train["step"], train_error, linestyle="--", linewidth=1, color=colors[run.depth])
            ax.plot(val["step"], 100 * (1 - _finite(val["value"])), linewidth=2, color=colors[run.depth],
                    marker="o" if len(val) < 3 else None,
                    label=None if run.depth in labelled else f"{variant}-{run.depth}")
            labelled.add(run.depth)
        ax.legend(title="solid: validation\ndashed: train", fontsize="small")
    fig.suptitle("Error during training by depth: plain against residual")
    return fig


def _by_depth(ax: Axes, shown: pd.DataFrame) -> None:
    """Points per run and a line through the per-depth means of ``value``, one color per variant."""
    if shown.empty:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
        return
    for variant in VARIANTS:
        values = shown[shown["variant"] == variant]
        if values.empty:
            continue
        color = VARIANT_COLORS[variant]
        ax.scatter(values["depth"].astype(int), values["value"], color=color, alpha=0.6, s=18)
        means = values.groupby("depth")["value"].mean()
        ax.plot(means.index.astype(int), means.to_numpy(), color=color, marker="o", label=variant)
    ax.legend()
    ax.set_xticks(sorted(shown["depth"].astype(int).unique()))


def _with_note(fig: Figure, note: str) -> Figure:
    if note:
        fig.supxlabel(note, fontsize="small")
    return fig


def _finite(values: pd.Series) -> pd.Series:
    """Float values with inf turned into NaN, so plots and means skip them."""
    values = values.astype(float)
    return values.where(np.isfinite(values))


def _scale(values: pd.Series) -> str:
    values = _finite(values).dropna()
    return "log" if len(values) and (values > 0).all() and values.max() > 10 * values.min() else "linear"


def _depth_colors(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, max(n, 1))][:n]
