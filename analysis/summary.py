"""Cross-run tables, figures and ``summary.json``: every swept setting compared, seeds summarised.

Everything here reads a runs folder (``<runs_dir>/<run_id>/``, see
:mod:`analysis.store`). :func:`run_table` gives one row per run with its
settings and the values of :data:`analysis.outcomes.VALUES`;
:func:`varying` finds the settings that differ between runs; runs are grouped
by *all* settings but the seed, so different configurations are compared,
never averaged (:func:`summary_json`). The figures keep depth on the x-axis
and give each combination of the other varying settings its own panel.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import seaborn.objects as so
from matplotlib.figure import Figure

from analysis.config import config_fields
from analysis.frames import PALETTE, setting_columns, variant_of, variants_in, varying_settings
from analysis.hooks.writer import PART_GLOB, SCHEMA, to_frame
from analysis.outcomes import VALUES, group_records, group_runs, run_values
from analysis.plots import SEED_BAND, WIDTH, over_seeds
from analysis.store import METRICS_FILE, STATS_DIR, list_runs, load_runs

SUMMARY_VALUES = tuple(VALUES)
"""The values ``summary.json`` gives per configuration (definitions in :data:`analysis.outcomes.VALUES`)."""
STATS_NEEDED = {"param_grad": ("norm",), "weight": ("norm",), "update": ("ratio",),
                "activation": ("dead_fraction",), "block": ("ratio",)}
"""The statistics the per-run values read from ``stats.parquet`` (only these rows are loaded)."""
STATUS_COLUMNS = ("run_id", "depth", "variant", "seed", "status", "steps_completed", "diverged_step", "diverged_layer",
                  "final_train_loss", "final_train_accuracy", "final_val_accuracy", "grad_ratio_init",
                  "grad_ratio_final", "grad_growth_init", "error")


def load_metrics(runs_dir: str | Path) -> pd.DataFrame:
    """Every run's metrics: tidy ``run_id, step, split, metric, value`` (see :func:`analysis.store.load_runs`);
    ``attrs["unreadable"]`` names the run folders whose files could not be read, with the reason."""
    df = load_runs(runs_dir)
    metrics = df[["run_id", "step", "split", "metric", "value"]].reset_index(drop=True)
    metrics.attrs["unreadable"] = dict(df.attrs["unreadable"])
    return metrics


def read_run_stats(stats_path: str | Path, run_id: str) -> pd.DataFrame:
    """The rows of one run's ``stats.parquet`` that :data:`STATS_NEEDED` names, with a ``run_id`` column."""
    parts = sorted(Path(stats_path).glob(PART_GLOB))
    if not parts:
        return to_frame(SCHEMA.empty_table()).assign(run_id=pd.Series(dtype=object))
    wanted = None
    for kind, stats in STATS_NEEDED.items():
        clause = (ds.field("kind") == kind) & ds.field("stat").isin(list(stats))
        wanted = clause if wanted is None else wanted | clause
    rank_0 = ds.field("rank") == 0  # a distributed run's values come from rank 0's rows
    table = ds.dataset([str(part) for part in parts], schema=SCHEMA, format="parquet").to_table(filter=wanted & rank_0)
    return to_frame(table).assign(run_id=run_id)


def run_table(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run: bookkeeping, ``variant``, config settings and every per-run value.

    Adds ``variant`` ('residual' or 'plain') to :func:`analysis.store.list_runs`'
    columns, then the values of :data:`analysis.outcomes.VALUES`. Sorted by
    depth, variant, seed and run id. A run any of whose files cannot be read keeps its row, with
    status ``unreadable`` and the file and reason in ``error``.
    """
    runs = list_runs(runs_dir)
    for column in ("run_id", "status", "error", "depth", "residual", "seed", "steps", "steps_completed",
                   "diverged_step", "path"):
        if column not in runs.columns:
            runs[column] = pd.Series(dtype=object)
    runs["variant"] = runs["residual"].map(variant_of)
    metrics = load_metrics(runs_dir)
    unreadable = {name: f"{METRICS_FILE}: {reason}" for name, reason in metrics.attrs["unreadable"].items()}
    stats = []
    for run_id, path in zip(runs["run_id"], runs["path"]):
        try:
            stats.append(read_run_stats(Path(path) / STATS_DIR, run_id))
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            unreadable.setdefault(Path(path).name, f"{STATS_DIR}: {type(exc).__name__}: {exc}")
    stats = pd.concat(stats, ignore_index=True) if stats else read_run_stats(Path(runs_dir) / "none", "")
    values = run_values(runs, metrics, stats)
    bad = runs["path"].map(lambda path: Path(path).name in unreadable) & (runs["status"] != "unreadable")
    runs.loc[bad, "status"] = "unreadable"
    runs.loc[bad, "error"] = runs.loc[bad, "path"].map(lambda path: unreadable[Path(path).name])
    runs = runs.merge(values, on="run_id", how="left")
    for column in ("depth", "seed", "steps", "steps_completed", "diverged_step"):
        runs[column] = pd.to_numeric(runs[column], errors="coerce").astype("Int64")
    return runs.sort_values(["depth", "variant", "seed", "run_id"], na_position="last").reset_index(drop=True)


def settings_of(runs: pd.DataFrame) -> list[str]:
    """The settings that define a configuration, as present in the run table (seed excluded)."""
    return setting_columns(runs, config_fields())


def varying(runs: pd.DataFrame) -> list[str]:
    """The settings that differ between the readable runs (depth and variant included)."""
    readable = runs[runs["variant"].notna()]
    return varying_settings(readable, settings_of(readable)) if len(readable) else []


FINISHED = ("complete", "diverged")
"""Runs that ended by themselves: the ones summarised over seeds (failed or running runs stopped early)."""


def summary_json(runs: pd.DataFrame) -> dict[str, Any]:
    """``{"varying": [...], "groups": [...]}``: one group per configuration, its seeds summarised.

    See :func:`analysis.outcomes.group_records` for a group's shape; only
    finished runs (complete or diverged, :data:`FINISHED`) are grouped.
    """
    readable = runs[runs["variant"].notna() & runs["status"].isin(FINISHED)]
    return {"varying": varying(runs),
            "groups": group_records(readable, readable[["run_id", *SUMMARY_VALUES]], settings_of(readable))}


TITLE_WIDTH = 55
"""Panel titles of the depth figures wrap at this many characters."""
COMMON = "most common settings"
"""How a configuration that differs from no setting's most common value is named in figures."""


def with_configuration(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``configuration``: the varying settings (other than depth and variant) whose value differs
    from that setting's most common value among the readable runs, as ``name=value`` text ('' for none).

    Two configurations always get different labels, and a label stays short however many settings vary.
    """
    others = [name for name in varying(runs) if name not in ("depth", "variant")]
    if not others:
        return runs.assign(configuration="")
    text = runs[others].map(_text)
    common = text[runs["variant"].notna()].mode().iloc[0]
    label = text.apply(lambda row: ", ".join(f"{name}={row[name]}" for name in others if row[name] != common[name]),
                       axis=1)
    return runs.assign(configuration=label)


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "None"
    return str(value)


def count_table(runs: pd.DataFrame) -> pd.DataFrame:
    """How many runs of each configuration, variant and depth ended in each status."""
    if runs.empty:
        return pd.DataFrame(index=pd.Index([], name="variant"))
    counts = with_configuration(runs).groupby(["configuration", "variant", "depth", "status"], dropna=False).size()
    return counts.unstack("status", fill_value=0).rename_axis(columns=None)


def status_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table's columns worth reading: status, final numbers, gradient flow and error ('' where none)."""
    runs = with_configuration(runs)
    columns = [column for column in STATUS_COLUMNS if column in runs.columns]
    table = runs[[*columns[:1], "configuration", *columns[1:]]].set_index("run_id")
    return table.assign(error=table["error"].fillna(""))


def group_table(runs: pd.DataFrame, values: tuple[str, ...] = ("final_train_loss", "final_val_accuracy",
                                                               "grad_ratio_init", "grad_growth_init")) -> pd.DataFrame:
    """One row per configuration and depth (named as :func:`with_configuration` does): n seeds, diverged count
    and mean / min / max of ``values``."""
    labels = with_configuration(runs).set_index("run_id")["configuration"]
    readable = runs[runs["variant"].notna() & runs["status"].isin(FINISHED)]
    rows = []
    # summary_json's groups come from group_runs over the same runs, in the same order.
    for group, (_, members) in zip(summary_json(runs)["groups"], group_runs(readable, settings_of(readable))):
        settings = group["settings"]
        row = {"depth": settings.get("depth"), "variant": settings.get("variant"),
               "configuration": labels[members["run_id"].iloc[0]] or COMMON,
               "n_seeds": group["n_seeds"], "diverged": group["metrics"]["diverged"]}
        for name in values:
            metric = group["metrics"][name]
            row.update({f"{name} mean": metric["mean"], f"{name} min": metric["min"], f"{name} max": metric["max"]})
        rows.append(row)
    return pd.DataFrame(rows)


def depth_points(runs: pd.DataFrame, columns: dict[str, str], *, positive: bool = False) -> tuple[pd.DataFrame, str]:
    """Long rows (``quantity``, ``value``) of complete runs for plots against depth, and a note on the others.

    Only complete runs are shown: a failed or diverged run stopped early, so
    its numbers are not comparable. Configurations trained at a single depth
    are left to :func:`plot_configurations`, and values that are not finite
    (not positive where ``positive``, for log axes) are left out too.
    """
    runs = with_configuration(runs)
    complete = (runs["status"] == "complete") & runs["variant"].notna() & runs["depth"].notna()
    reasons = [f"{count} {status}" for status, count in
               runs.loc[~complete, "status"].fillna("unknown").value_counts().sort_index().items()]
    depths = runs[complete].groupby("configuration")["depth"].nunique()
    single = complete & (runs["configuration"].map(depths).fillna(0) < 2)
    if single_depth := int(single.sum()):
        reasons.append(f"{single_depth} runs of configurations trained at one depth (compared by configuration)")
    complete &= ~single
    long = runs[complete].melt(id_vars=["run_id", "depth", "variant", "seed", "configuration"],
                               value_vars=list(columns), var_name="quantity", value_name="value")
    long["value"] = long["value"].astype(float)
    keep = np.isfinite(long["value"]) & ((long["value"] > 0) if positive else True)
    if missing := int((~keep).sum()):
        reasons.append(f"{missing} values of complete runs that are missing or not finite")
    long = long[keep].assign(quantity=lambda frame: frame["quantity"].map(columns), depth=lambda f: f["depth"].astype(int),
                             configuration=lambda f: f["configuration"].replace("", COMMON))
    note = f"Not shown: {', '.join(reasons)} (see the table of all runs)" if reasons else ""
    return long, note


def _depth_figure(long: pd.DataFrame, note: str, *, title: str, log_y: bool, ylabel: str) -> Figure:
    """Mean over seeds (line) and seed range (band) against depth: one row per quantity, one column per
    configuration."""
    nrows = max(1, long["quantity"].nunique())
    ncols = max(1, long["configuration"].nunique())
    fig = Figure(figsize=(WIDTH, 3.4 * nrows), layout="constrained")
    fig.suptitle(title)
    if long.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no complete runs with these values", ha="center", va="center", transform=ax.transAxes)
    else:
        palette = {variant: PALETTE.get(variant, "grey") for variant in variants_in(long)}
        summary = over_seeds(long, "depth", "value", ["variant", "quantity", "configuration"], log=log_y)
        plot = (so.Plot(summary, x="depth", y="mean", ymin="band_min", ymax="band_max", color="variant")
                .add(so.Line(marker="o"))
                .add(so.Band(alpha=0.2))
                .scale(color=so.Nominal(palette, order=list(palette)), x=so.Continuous().tick(at=sorted(set(long["depth"]))))
                .label(x="depth (weight layers)", y=ylabel, color="variant"))
        if nrows > 1 or ncols > 1:
            plot = plot.facet(col="configuration" if ncols > 1 else None, row="quantity" if nrows > 1 else None)
            plot = plot.share(y="row" if nrows > 1 else True)
        if log_y:
            plot = plot.scale(y="log")
        plot.on(fig).plot()
        for ax in fig.axes:  # a long configuration label would run into its neighbour's title
            ax.set_title(textwrap.fill(ax.get_title(), TITLE_WIDTH))
    if note:
        fig.supxlabel(note, fontsize="small")
    return fig


def plot_final_vs_depth(runs: pd.DataFrame) -> Figure:
    """Final train loss and accuracy of complete runs against depth, residual against plain, per configuration."""
    long, note = depth_points(runs, {"final_train_loss": "final train loss",
                                     "final_train_accuracy": "final train accuracy"})
    return _depth_figure(long, note, log_y=False, ylabel="",
                         title="Final training numbers against depth (line: mean over seeds; band: range over seeds)")


def plot_grad_flow(runs: pd.DataFrame) -> Figure:
    """Gradient flow against depth at both ends of training: the stem-to-last-conv ratio and the fitted factor per layer.

    Log scale; 1 means equal norms (ratio) or no change per layer (factor).
    """
    long, note = depth_points(runs, {"grad_ratio_init": "first-to-last ratio, first recorded step",
                                     "grad_ratio_final": "first-to-last ratio, last recorded step",
                                     "grad_growth_init": "factor per layer, first recorded step",
                                     "grad_growth_final": "factor per layer, last recorded step"}, positive=True)
    fig = _depth_figure(long, note, log_y=True, ylabel="(log scale)",
                        title="Gradient flow against depth: main-path convs, input over output")
    for ax in fig.axes:
        if ax.has_data():
            ax.axhline(1.0, color="0.5", linewidth=1, linestyle=":")
    return fig


def plot_degradation(metrics: pd.DataFrame, runs: pd.DataFrame, *, smooth: int | None = None) -> Figure:
    """Training error by depth, plain (left) against residual (right), as in He et al. 2015, Fig. 1 and 6.

    Complete runs only (a run that stopped early would make the seed mean
    jump). Error = 100 * (1 - train accuracy), a trailing mean over ``smooth``
    steps per run (default: 1/25 of the longest run); line: mean over seeds,
    band: range. One colour per depth; one row per configuration.
    """
    runs = with_configuration(runs[runs["variant"].notna() & runs["depth"].notna() & (runs["status"] == "complete")])
    rows = metrics[(metrics["split"] == "train") & (metrics["metric"] == "accuracy")]
    rows = rows.merge(runs[["run_id", "depth", "variant", "configuration"]].replace({"configuration": {"": COMMON}}),
                      on="run_id")
    fig = Figure(figsize=(WIDTH, 3.6 * max(1, runs["configuration"].nunique())), layout="constrained")
    fig.suptitle("Training error during training by depth: plain against residual (band: range over seeds)")
    if rows.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no training metrics", ha="center", va="center", transform=ax.transAxes)
        return fig
    window = smooth or max(1, int(rows["step"].max()) // 25)
    rows = rows.sort_values("step")
    rows["error"] = 100 * (1 - rows.groupby("run_id")["value"].transform(
        lambda s: s.rolling(window, min_periods=1).mean()))
    rows["depth"] = rows["depth"].astype(int).astype(str)
    summary = over_seeds(rows[np.isfinite(rows["error"])], "step", "error", ["depth", "variant", "configuration"])
    plot = (so.Plot(summary, x="step", y="mean", ymin="band_min", ymax="band_max", color="depth")
            .facet(col="variant", row="configuration" if rows["configuration"].nunique() > 1 else None,
                   order={"col": [v for v in ("plain", "residual") if v in set(rows["variant"])]})
            .add(so.Line())
            .add(so.Band(alpha=0.15))
            .scale(color=so.Nominal("viridis", order=sorted(set(rows["depth"]), key=int)))
            .label(x="step", y=f"train error (%), mean of {window} steps", color="depth"))
    plot.on(fig).plot()
    return fig


def plot_configurations(runs: pd.DataFrame) -> Figure:
    """Final train loss of every configuration at each depth it was trained at: one row per configuration,
    residual and plain side by side, the mean over seeds with the seed range and each seed as a dot.

    Finished runs only; a diverged seed has no finite loss, so its configuration is marked in the label
    with the count (``diverged 1/3``) and drawn from the other seeds.
    """
    runs = with_configuration(runs[runs["variant"].notna() & runs["depth"].notna()
                                   & runs["status"].isin(FINISHED)])
    fig = Figure(figsize=(WIDTH, 1.2 + 0.32 * max(1, runs["configuration"].nunique() * runs["depth"].nunique())),
                 layout="constrained")
    fig.suptitle("Final train loss by configuration (dot: mean over seeds; bar: range; small dots: seeds)")
    if runs.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    diverged = runs.groupby(["configuration", "depth"])["status"].agg(
        lambda status: f"diverged {int((status == 'diverged').sum())}/{len(status)}" if (status == "diverged").any()
        else "")
    label = runs.apply(lambda run: " ".join(filter(None, [f"depth {int(run['depth'])}", run["configuration"] or COMMON,
                                                          diverged[(run["configuration"], run["depth"])]])), axis=1)
    rows = runs.assign(label=label, value=runs["final_train_loss"].astype(float))
    no_value = sorted(set(rows.loc[~np.isfinite(rows["value"]), "label"]) - set(rows.loc[np.isfinite(rows["value"]), "label"]))
    if no_value:
        fig.supxlabel(f"Not shown (no finite loss in any seed): {'; '.join(no_value)}", fontsize="small")
    rows = rows[np.isfinite(rows["value"])]
    palette = {variant: PALETTE.get(variant, "grey") for variant in variants_in(rows)}
    (so.Plot(rows, x="value", y="label", color="variant")
     .add(so.Dot(pointsize=7), so.Agg(), so.Dodge())
     .add(so.Range(), so.Est(errorbar=SEED_BAND), so.Dodge())
     .add(so.Dot(pointsize=3, alpha=0.5), so.Dodge(), so.Jitter(0))
     .scale(color=so.Nominal(palette, order=list(palette)))
     .label(x="final train loss (mean of the last steps)", y="", color="variant")
     .on(fig).plot())
    return fig
