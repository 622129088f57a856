import json
import math

import nbformat
import numpy as np
import pandas as pd
import pytest

from analysis import summary
from analysis.config import TrainConfig
from analysis.hooks import STATS, read_stats
from analysis.train import Callback, train

TINY = dict(width=4, steps=4, batch_size=8, val_batches=1, val_every=2, stats_every=2, device="cpu", threads=1)


class FailAtStep(Callback):
    def on_step_end(self, run):
        if run.step == 2:
            raise RuntimeError("disk <full> & gone")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Real tiny runs: both variants at depths 8 and 14, one without statistics, one diverged, one failed."""
    root = tmp_path_factory.mktemp("runs")
    for depth in (8, 14):
        for residual in (True, False):
            assert train(TrainConfig(depth=depth, residual=residual, **TINY), root=root, progress=False).status \
                == "complete"
    assert train(TrainConfig(depth=14, residual=True, **{**TINY, "stats_every": 0}), root=root,
                 progress=False).status == "complete"
    diverged = TrainConfig(depth=8, residual=False, norm="none", lr=1e6, schedule="constant", **TINY)
    assert train(diverged, root=root, progress=False).status == "diverged"
    with pytest.raises(RuntimeError):
        train(TrainConfig(depth=8, residual=True, seed=1, **TINY), root=root, progress=False,
              callbacks=[FailAtStep()])
    return root


@pytest.fixture(scope="module")
def runs(runs_dir):
    return summary.run_table(runs_dir)


def _record(path):
    return json.loads((path / "config.json").read_text())


def _direct_grad_ratio(stats_path):
    """The ratio straight from read_stats: conv/linear weight gradient norms at the last step, first/last index."""
    if not stats_path.exists():
        return math.nan
    stats = read_stats(stats_path)
    grads = stats[(stats["kind"] == "param_grad") & (stats["stat"] == "norm") & (stats["param"] == "weight")
                  & stats["module_type"].isin(["Conv2d", "Linear"])]
    last = grads[grads["step"] == grads["step"].max()].sort_values("index")
    return last["value"].iloc[0] / last["value"].iloc[-1]


def test_run_table_numbers_match_direct_computation(runs_dir, runs):
    assert len(runs) == 7
    for path in sorted(p for p in runs_dir.iterdir() if (p / "config.json").exists()):
        record = _record(path)
        row = runs.set_index("run_id").loc[record["run_id"]]
        assert row["status"] == record["status"]
        assert row["variant"] == ("residual" if record["config"]["residual"] else "plain")
        assert row["depth"] == record["config"]["depth"]
        metrics = pd.read_parquet(path / "metrics.parquet")
        train_rows = metrics[metrics["split"] == "train"].sort_values("step")
        val_rows = metrics[metrics["split"] == "val"].sort_values("step")
        loss = train_rows[train_rows["metric"] == "loss"]["value"].iloc[-summary.TRAIN_WINDOW:]
        accuracy = train_rows[train_rows["metric"] == "accuracy"]["value"].iloc[-summary.TRAIN_WINDOW:]
        val_accuracy = val_rows[val_rows["metric"] == "accuracy"]["value"]
        np.testing.assert_allclose(row["final_train_loss"], loss.mean(skipna=False))
        np.testing.assert_allclose(row["final_train_accuracy"], accuracy.mean(skipna=False))
        np.testing.assert_allclose(row["final_val_accuracy"], val_accuracy.iloc[-1] if len(val_accuracy) else np.nan)
        np.testing.assert_allclose(row["grad_norm_ratio"], _direct_grad_ratio(path / "stats.parquet"))


def test_run_table_keeps_failed_and_diverged_runs(runs):
    by_status = runs.groupby("status")["run_id"].count().to_dict()
    assert by_status == {"complete": 5, "diverged": 1, "failed": 1}
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["error"] == "RuntimeError: disk <full> & gone"
    assert failed["steps_completed"] == 2
    diverged = runs[runs["status"] == "diverged"].iloc[0]
    assert not np.isfinite(diverged["final_train_loss"])
    no_stats = runs[(runs["stats_every"] == 0)].iloc[0]
    assert np.isnan(no_stats["grad_norm_ratio"]) and pd.isna(no_stats["first_layer"])
    assert list(runs["depth"]) == sorted(runs["depth"])
    complete = runs[(runs["status"] == "complete") & (runs["stats_every"] > 0)]
    assert (complete["first_layer"] == "stem.0").all() and (complete["last_layer"] == "fc").all()
    assert (complete["grad_norm_ratio"] > 0).all()


def test_final_metrics_window():
    metrics = pd.DataFrame({
        "run_id": ["a"] * 8 + ["b"],
        "step": [1, 2, 3, 4, 1, 2, 3, 4, 1],
        "split": ["train"] * 4 + ["train"] * 2 + ["val"] * 2 + ["train"],
        "metric": ["loss"] * 4 + ["accuracy"] * 2 + ["accuracy"] * 2 + ["loss"],
        "value": [4.0, 3.0, 2.0, 1.0, 0.1, 0.3, 0.2, 0.6, 7.0],
    })
    finals = summary.final_metrics(metrics, window=2).set_index("run_id")
    assert finals.loc["a", "final_train_loss"] == 1.5
    assert finals.loc["a", "final_train_accuracy"] == pytest.approx(0.2)
    assert finals.loc["a", "final_val_accuracy"] == 0.6 and finals.loc["a", "last_step"] == 4
    assert finals.loc["b", "final_train_loss"] == 7.0 and np.isnan(finals.loc["b", "final_val_accuracy"])
    with pytest.raises(ValueError, match="window"):
        summary.final_metrics(metrics, window=0)


def test_grad_norm_ratio_uses_first_and_last_weight_layer_at_last_step():
    norms = pd.DataFrame({"step": [0, 0, 5, 5, 5], "module": ["stem", "fc", "stem", "mid", "fc"],
                          "module_type": ["Conv2d", "Linear", "Conv2d", "Conv2d", "Linear"],
                          "index": [0, 9, 0, 4, 9], "value": [1.0, 1.0, 0.5, 3.0, 4.0]})
    ratio = summary.grad_norm_ratio(norms.sample(frac=1.0, random_state=0))
    assert ratio == {"grad_step": 5, "first_layer": "stem", "last_layer": "fc", "first_grad_norm": 0.5,
                     "last_grad_norm": 4.0, "grad_norm_ratio": 0.125}
    assert np.isnan(summary.grad_norm_ratio(norms.iloc[:0])["grad_norm_ratio"])
    assert summary.GRAD_STAT in STATS[summary.GRAD_KIND]


def test_count_and_status_tables(runs):
    counts = summary.count_table(runs)
    assert counts.loc[("plain", 8), "diverged"] == 1 and counts.loc[("residual", 14), "complete"] == 2
    assert counts.to_numpy().sum() == len(runs)
    table = summary.status_table(runs)
    assert list(table.columns) == list(summary.STATUS_COLUMNS[1:]) and set(table.index) == set(runs["run_id"])


def _labelled(fig):
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert fig.get_suptitle() or len(fig.axes) == 1


def _texts(fig):
    return " ".join(text.get_text() for ax in fig.axes for text in ax.texts) + " " + fig.get_supxlabel()


def test_final_vs_depth_plots_per_depth_means(runs):
    fig = summary.plot_final_vs_depth(runs)
    _labelled(fig)
    loss_ax = fig.axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    complete = runs[runs["status"] == "complete"]
    for variant in ("plain", "residual"):
        means = complete[complete["variant"] == variant].groupby("depth")["final_train_loss"].mean()
        np.testing.assert_array_equal(lines[variant].get_xdata(), means.index.astype(int))
        np.testing.assert_allclose(lines[variant].get_ydata(), means.to_numpy())
    assert "Not shown: 1 diverged, 1 failed (see the table of all runs)" in _texts(fig)


def test_grad_ratio_plot(runs):
    fig = summary.plot_grad_ratio(runs)
    _labelled(fig)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    residual = {line.get_label(): line for line in ax.get_lines()}["residual"]
    assert "1 complete without a value" in _texts(fig)
    shown = runs[(runs["variant"] == "residual") & (runs["status"] == "complete") & (runs["stats_every"] > 0)]
    np.testing.assert_allclose(residual.get_ydata(), shown.groupby("depth")["grad_norm_ratio"].mean().to_numpy())


def test_degradation_curves(runs_dir, runs):
    metrics = summary.load_metrics(runs_dir)
    fig = summary.plot_degradation(metrics, runs, smooth=1)
    _labelled(fig)
    plain_ax, residual_ax = fig.axes
    assert plain_ax.get_title() == "plain networks" and residual_ax.get_title() == "residual networks"
    run = runs[(runs["variant"] == "residual") & (runs["depth"] == 8) & (runs["status"] == "complete")].iloc[0]
    val = metrics[(metrics["run_id"] == run["run_id"]) & (metrics["split"] == "val")
                  & (metrics["metric"] == "accuracy")].sort_values("step")
    solid = [line for line in residual_ax.get_lines() if line.get_label() == "residual-8"]
    np.testing.assert_allclose(solid[0].get_ydata(), 100 * (1 - val["value"].to_numpy()))


@pytest.mark.parametrize("subset", ["residual only", "one depth", "no stats", "nothing"])
def test_figures_work_for_any_mix_of_runs(runs_dir, runs, subset):
    chosen = {
        "residual only": runs[runs["variant"] == "residual"],
        "one depth": runs[runs["depth"] == 14],
        "no stats": runs[runs["stats_every"] == 0],
        "nothing": runs.iloc[:0],
    }[subset]
    metrics = summary.load_metrics(runs_dir)
    figures = [summary.plot_final_vs_depth(chosen), summary.plot_degradation(metrics, chosen),
               summary.plot_grad_ratio(chosen)]
    for fig in figures:
        _labelled(fig)
        fig.canvas.draw()
    if subset == "residual only":
        assert "no plain runs" in _texts(figures[1])
    if subset in ("no stats", "nothing"):
        assert "no gradient statistics" in _texts(figures[2])


def test_run_table_of_empty_folder(tmp_path):
    runs = summary.run_table(tmp_path)
    assert runs.empty and {"run_id", "variant", "final_train_loss", "grad_norm_ratio"} <= set(runs.columns)
    assert summary.count_table(runs).empty


def test_summary_notebook_is_short_calls_with_parameters_and_no_outputs():
    notebook = nbformat.read("notebooks/summary.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0].source.strip() == 'runs_dir = "runs"'
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None
        assert len(cell.source.splitlines()) <= 5
    calls = " ".join(cell.source for cell in code)
    for name in ("run_table", "load_metrics", "plot_final_vs_depth", "plot_degradation", "plot_grad_ratio",
                 "status_table"):
        assert f"summary.{name}(" in calls
