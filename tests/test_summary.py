"""Cross-run summary: the run table, configurations and seeds, summary.json and the figures against depth.

Real tiny runs are trained once per module; every number is checked against a
direct computation from the run's own files (metrics.parquet, stats.parquet).
"""
import json
import math

import nbformat
import numpy as np
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from analysis import summary
from analysis.config import TrainConfig
from analysis.frames import NOT_SETTINGS, TRAIN_WINDOW, spread, to_json_value
from analysis.hooks import read_stats
from analysis.outcomes import VALUES
from analysis.train import Callback, train
import drawn
from conftest import TINY

STATS_STEPS = (1, 3)  # stats_every=2 over 4 steps, numbered from 1
N_RUNS = 15  # 14 trained (one failed) and one unreadable folder
FINAL_LABELS = {"final_train_loss": "final train loss", "final_train_accuracy": "final train accuracy"}
FLOW_LABELS = {"grad_ratio_init": "first-to-last ratio, first recorded step",
               "grad_ratio_final": "first-to-last ratio, last recorded step",
               "grad_growth_init": "factor per layer, first recorded step",
               "grad_growth_final": "factor per layer, last recorded step"}


class FailAtStep(Callback):
    def on_step_end(self, run):
        if run.step == 2:
            raise RuntimeError("disk <full> & gone")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Tiny runs: a base sweep (depth 8 and 14, both variants, seeds 0 and 1), the same d8 residual runs with
    Adam and without batch norm, a projection-shortcut run, a run without statistics, a diverged run, a failed
    run and a folder whose config.json is garbage."""
    root = tmp_path_factory.mktemp("runs")

    def run(**changes):
        return train(TrainConfig(**{**TINY, **changes}), root=root, progress=False).status

    for seed in (0, 1):
        assert run(depth=8, residual=True, seed=seed) == "complete"
        assert run(depth=8, residual=False, seed=seed) == "complete"
        assert run(depth=8, residual=True, seed=seed, optimizer="adam") == "complete"
        assert run(depth=8, residual=True, seed=seed, norm="none") == "complete"
    assert run(depth=14, residual=True, seed=0) == "complete"
    assert run(depth=14, residual=True, seed=1, stats_every=0) == "complete"
    assert run(depth=14, residual=False, seed=0) == "complete"
    assert run(depth=14, residual=True, seed=0, shortcut="B") == "complete"
    assert run(depth=8, residual=False, seed=0, norm="none", lr=1e6) == "diverged"
    with pytest.raises(RuntimeError, match="disk"):
        train(TrainConfig(**{**TINY, "depth": 8, "residual": False, "norm": "none"}), root=root, progress=False,
              callbacks=[FailAtStep()])
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def runs(runs_dir):
    with pytest.warns(UserWarning, match="unreadable run"):
        return summary.run_table(runs_dir)


@pytest.fixture(scope="module")
def metrics(runs_dir):
    with pytest.warns(UserWarning, match="unreadable run"):
        return summary.load_metrics(runs_dir)


# -- selections and direct computations -----------------------------------------

def _select(runs, **settings):
    """Rows whose settings equal ``settings`` (None: the setting is missing)."""
    mask = pd.Series(True, index=runs.index)
    for name, value in settings.items():
        mask &= runs[name].isna() if value is None else (runs[name] == value)
    return runs[mask]


def _base(runs):
    """The base sweep: SGD, batch norm, lr 0.1, family-default shortcut (only depth, variant and seed differ)."""
    return _select(runs, optimizer="sgd", norm="batch", lr=0.1, shortcut=None)


def _record(path):
    return json.loads((path / "config.json").read_text())


def _readable_dirs(runs_dir):
    return [path for path in sorted(runs_dir.iterdir()) if path.name != "broken"]


def _main_path_conv_grads(stats_path):
    """Weight-gradient norms of the main-path convs (stem first, shortcut convs and the classifier out),
    straight from read_stats: {step: their rows in forward order}."""
    stats = read_stats(stats_path)
    rows = stats[(stats["kind"] == "param_grad") & (stats["stat"] == "norm") & (stats["param"] == "weight")
                 & (stats["module_type"] == "Conv2d") & (stats["call"] == 0)
                 & ~stats["module"].str.contains("shortcut")]
    return {int(step): group.sort_values("index") for step, group in rows.groupby("step")}


def _growth(values):
    """exp(-slope) of a least-squares line through log(values) over the layer index 1..L."""
    slope, _ = np.polyfit(np.arange(1, len(values) + 1), np.log(values), 1)
    return float(np.exp(-slope))


def _same(a, b):
    """Equal, or both missing (None, NaN or NA)."""
    a_missing = a is None or (isinstance(a, float) and math.isnan(a)) or a is pd.NA
    b_missing = b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NA
    return a_missing and b_missing or (not a_missing and not b_missing and a == b)


def _json_values(series):
    return [None if not np.isfinite(v) else float(v) for v in series.astype(float)]


# -- the run table --------------------------------------------------------------

def test_run_table_one_row_per_run_with_settings_and_every_value(runs_dir, runs):
    assert len(runs) == N_RUNS and runs["run_id"].is_unique
    assert {"run_id", "status", "variant", "seed", "depth", "optimizer", "norm", "lr", "shortcut",
            "stats_every", *VALUES} <= set(runs.columns)
    table = runs.set_index("run_id")
    for path in _readable_dirs(runs_dir):
        record = _record(path)
        row = table.loc[record["run_id"]]
        assert row["status"] == record["status"]
        assert row["variant"] == ("residual" if record["config"]["residual"] else "plain")
        for name in ("depth", "seed", "optimizer", "norm", "lr", "stats_every"):
            assert row[name] == record["config"][name], name
    readable = runs[runs["variant"].notna()]
    expected = readable.sort_values(["depth", "variant", "seed", "run_id"])["run_id"].tolist()
    assert runs["run_id"].tolist() == [*expected, "broken"]
    assert str(runs["depth"].dtype) == "Int64"


def test_final_numbers_match_metrics_parquet(runs_dir, runs):
    table = runs.set_index("run_id")
    for path in _readable_dirs(runs_dir):
        row = table.loc[_record(path)["run_id"]]
        metrics = pd.read_parquet(path / "metrics.parquet")
        train_rows = metrics[metrics["split"] == "train"].sort_values("step")
        val_rows = metrics[metrics["split"] == "val"].sort_values("step")
        for metric in ("loss", "accuracy"):
            last = train_rows.loc[train_rows["metric"] == metric, "value"].to_numpy()[-TRAIN_WINDOW:]
            np.testing.assert_allclose(row[f"final_train_{metric}"], np.mean(last))
            val = val_rows.loc[val_rows["metric"] == metric, "value"].to_numpy()
            np.testing.assert_allclose(row[f"final_val_{metric}"], val[-1] if len(val) else np.nan)
    assert TRAIN_WINDOW > TINY["steps"]  # the window covers every step of these runs
    assert table["final_train_loss"].notna().sum() == N_RUNS - 2  # diverged: non-finite; unreadable: missing


def test_gradient_flow_is_stem_over_last_main_path_conv(runs_dir, runs):
    """Ratio and growth factor at the first and the last recorded step, computed straight from read_stats."""
    table = runs.set_index("run_id")
    checked = 0
    for path in _readable_dirs(runs_dir):
        record = _record(path)
        if not (path / "stats.parquet").exists():
            continue
        row = table.loc[record["run_id"]]
        by_step = _main_path_conv_grads(path / "stats.parquet")
        first, last = by_step[min(by_step)], by_step[max(by_step)]
        assert first["module"].iloc[0] == "stem.0"
        assert not first["module"].str.contains("fc|shortcut").any()
        assert row["n_layers"] == len(first) == record["config"]["depth"] - 1  # every weight layer but the fc
        for end, rows in (("init", first), ("final", last)):
            norms = rows["value"].to_numpy()
            np.testing.assert_allclose(row[f"grad_ratio_{end}"], norms[0] / norms[-1], rtol=1e-12)
            np.testing.assert_allclose(row[f"grad_growth_{end}"], _growth(norms), rtol=1e-9)
        checked += 1
    assert checked == 12  # not: the run without statistics, the failed run (its callbacks replace the stats one)


def test_recorded_steps_and_shortcut_convs_are_what_the_ratio_test_assumes(runs_dir, runs):
    row = _select(runs, shortcut="B").iloc[0]
    stats = read_stats(runs_dir / row["run_id"] / "stats.parquet")
    assert sorted(stats["step"].unique()) == list(STATS_STEPS)
    grads = stats[(stats["kind"] == "param_grad") & (stats["stat"] == "norm") & (stats["param"] == "weight")
                  & (stats["step"] == STATS_STEPS[0])]
    shortcut_convs = grads[grads["module"].str.contains("shortcut") & (grads["module_type"] == "Conv2d")]
    assert len(shortcut_convs) == 2  # two projections, left out of the 13 main-path convs
    fc = grads.loc[grads["module"] == "fc", "value"].iloc[0]
    stem = grads.loc[grads["module"] == "stem.0", "value"].iloc[0]
    assert row["grad_ratio_init"] != pytest.approx(stem / fc)  # not the classifier


def test_other_statistic_values_match_read_stats(runs_dir, runs):
    """Dead fraction (mean over main-path ReLUs), block ratio (median over blocks) at the last recorded step,
    and the median update ratio at the recorded step with the highest learning rate."""
    for run_id in _base(runs).query("stats_every > 0")["run_id"]:
        row = runs.set_index("run_id").loc[run_id]
        stats = read_stats(runs_dir / run_id / "stats.parquet")
        last = stats[(stats["step"] == STATS_STEPS[-1]) & (stats["call"] == 0)]
        relus = last[(last["kind"] == "activation") & (last["stat"] == "dead_fraction")
                     & (last["module_type"] == "ReLU") & ~last["module"].str.contains("shortcut")]
        np.testing.assert_allclose(row["dead_fraction_final"], relus["value"].mean())
        blocks = last[(last["kind"] == "block") & (last["stat"] == "ratio")]
        np.testing.assert_allclose(row["block_ratio_final"],
                                   blocks["value"].median() if len(blocks) else np.nan)
        assert (len(blocks) > 0) == (row["variant"] == "residual")
        lr = pd.read_parquet(runs_dir / run_id / "metrics.parquet").query("split == 'train' and metric == 'lr'")
        lr = lr.set_index("step")["value"]
        peak = max(STATS_STEPS, key=lambda step: lr[step])
        updates = stats[(stats["step"] == peak) & (stats["kind"] == "update") & (stats["stat"] == "ratio")
                        & (stats["param"] == "weight") & stats["module_type"].isin(["Conv2d", "Linear"])
                        & (stats["call"] == 0) & ~stats["module"].str.contains("shortcut")]
        np.testing.assert_allclose(row["update_ratio_peak_lr"], updates["value"].median())
        assert row["peak_lr"] == lr[peak] == 0.1  # the cosine schedule starts at its peak


def test_run_without_statistics_has_nan_statistic_values(runs):
    row = _select(runs, stats_every=0).iloc[0]
    assert row["status"] == "complete" and np.isfinite(row["final_train_loss"]) and row["n_layers"] == 0
    for name in ("grad_ratio_init", "grad_ratio_final", "grad_growth_init", "grad_growth_final",
                 "grad_growth_r2_init", "scaled_growth_init", "scaled_growth_final", "update_ratio_peak_lr",
                 "peak_lr", "dead_fraction_final", "block_ratio_final"):
        assert np.isnan(row[name]), name


def test_diverged_failed_and_unreadable_runs_keep_their_rows(runs_dir, runs):
    assert runs["status"].value_counts().to_dict() == {"complete": 12, "diverged": 1, "failed": 1, "unreadable": 1}
    diverged = runs[runs["status"] == "diverged"].iloc[0]
    metrics = pd.read_parquet(runs_dir / diverged["run_id"] / "metrics.parquet")
    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "loss")]
    assert diverged["diverged"] == 1
    assert diverged["diverged_step"] == loss.loc[~np.isfinite(loss["value"]), "step"].min()
    assert not np.isfinite(diverged["final_train_loss"])
    # gradients were recorded at step 1 only (the non-finite loss stops before the backward pass): both ends agree
    assert diverged["grad_ratio_init"] == diverged["grad_ratio_final"] > 0
    assert (runs.loc[runs["status"] != "diverged", "diverged"] == 0).all()
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["error"] == "RuntimeError: disk <full> & gone" and failed["steps_completed"] == 2
    assert np.isfinite(failed["final_train_loss"]) and np.isnan(failed["final_val_loss"])
    broken = runs[runs["status"] == "unreadable"].iloc[0]
    assert broken["run_id"] == "broken" and broken["error"].startswith("JSONDecodeError")
    assert pd.isna(broken["variant"]) and pd.isna(broken["depth"])
    assert all(np.isnan(broken[name]) for name in VALUES if name != "diverged")


# -- configurations: varying settings and summary.json -----------------------------

def test_varying_lists_settings_that_differ_and_never_the_seed(runs):
    assert summary.varying(runs) == ["depth", "variant", "shortcut", "norm", "optimizer", "lr"]
    assert summary.varying(_base(runs)) == ["depth", "variant"]
    d8_residual = _select(runs, depth=8, variant="residual", norm="batch", shortcut=None)
    assert summary.varying(d8_residual) == ["optimizer"]
    assert summary.varying(_select(d8_residual, optimizer="sgd", seed=0)) == []
    for runs_subset in (runs, _base(runs), d8_residual):
        assert not set(summary.varying(runs_subset)) & set(NOT_SETTINGS)
    assert "seed" in NOT_SETTINGS and "stats_every" in NOT_SETTINGS


@pytest.mark.parametrize("setting, fixed, values", [
    ("optimizer", {"norm": "batch"}, ["adam", "sgd"]),
    ("norm", {"optimizer": "sgd"}, ["batch", "none"]),
])
def test_configurations_that_differ_in_one_setting_are_separate_groups(runs, setting, fixed, values):
    chosen = _select(runs, depth=8, variant="residual", lr=0.1, shortcut=None, **fixed)
    assert len(chosen) == 4
    found = summary.summary_json(chosen)
    assert found["varying"] == [setting]
    assert sorted(group["settings"][setting] for group in found["groups"]) == values
    for group in found["groups"]:
        value = group["settings"][setting]
        mine = chosen[chosen[setting] == value].sort_values("seed")
        assert group["settings"]["depth"] == 8 and group["settings"]["variant"] == "residual"
        assert group["n_seeds"] == 2 and group["seeds"] == [0, 1]
        assert set(group["metrics"]) == set(VALUES)
        assert group["metrics"]["diverged"] == 0
        for name in VALUES:
            if name == "diverged":
                continue
            metric = group["metrics"][name]
            direct = mine[name].to_numpy(dtype=float)
            assert metric["values"] == _json_values(mine[name]), name
            assert metric["n"] == 2 and metric["sd"] is None
            if np.isfinite(direct).all():
                assert metric["mean"] == pytest.approx(np.mean(direct))
                assert metric["min"] == np.min(direct) and metric["max"] == np.max(direct)
    first, second = (group["metrics"]["final_train_loss"]["mean"] for group in found["groups"])
    assert first != pytest.approx(second)


def test_groups_hold_exactly_their_own_runs(runs):
    """Every finished run is in exactly one group, and a group's values are its own runs' values in seed order."""
    found = summary.summary_json(runs)
    readable = runs[runs["variant"].notna() & runs["status"].isin(summary.FINISHED)]
    assert len(readable) < len(runs[runs["variant"].notna()])  # the failed run is left out
    varying = found["varying"]
    assert len(found["groups"]) == len(readable.drop_duplicates(varying))
    assert sum(group["n_seeds"] for group in found["groups"]) == len(readable)
    seen = []
    for group in found["groups"]:
        mask = readable.apply(lambda row: all(_same(row[name], group["settings"][name]) for name in varying), axis=1)
        mine = readable[mask].sort_values("seed")
        seen += mine["run_id"].tolist()
        assert group["n_seeds"] == len(mine) and group["seeds"] == mine["seed"].astype(int).tolist()
        for name in ("final_train_loss", "final_val_accuracy", "grad_ratio_init", "grad_growth_final"):
            assert group["metrics"][name]["values"] == _json_values(mine[name]), name
        assert group["metrics"]["diverged"] == int(mine["diverged"].sum())
        for name in summary.settings_of(readable):
            assert all(_same(to_json_value(value), group["settings"][name]) or isinstance(value, tuple)
                       for value in mine[name]), name
    assert sorted(seen) == sorted(readable["run_id"])


def test_sd_only_from_three_seeds(runs):
    two = _select(runs, depth=8, variant="residual", optimizer="sgd", norm="batch", shortcut=None)
    third = two[two["seed"] == 1].assign(seed=2.0, run_id="planted-s2", final_train_loss=3.5)
    three = pd.concat([two, third], ignore_index=True)
    [group] = summary.summary_json(three)["groups"]
    assert group["n_seeds"] == 3 and group["seeds"] == [0, 1, 2]
    loss = group["metrics"]["final_train_loss"]
    direct = three.sort_values("seed")["final_train_loss"].to_numpy()
    assert loss["values"] == direct.tolist()
    assert loss["sd"] == pytest.approx(np.std(direct, ddof=1)) and loss["mean"] == pytest.approx(direct.mean())
    assert summary.summary_json(two)["groups"][0]["metrics"]["final_train_loss"]["sd"] is None


def test_spread():
    assert spread([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "sd": pytest.approx(np.std([1, 2, 4], ddof=1)),
                                       "min": 1.0, "max": 4.0, "n": 3, "values": [1.0, 2.0, 4.0]}
    assert math.isnan(spread([1.0, 2.0])["sd"])
    assert spread([])["n"] == 0 and spread([])["values"] == []
    assert spread([1.0, math.inf, 2.0])["mean"] == math.inf  # a diverged seed shows
    assert math.isnan(spread([1.0, math.nan])["mean"])  # a missing value is not skipped


def test_summary_json_is_strict_json(runs):
    text = json.dumps(to_json_value(summary.summary_json(runs)), allow_nan=False)
    loaded = json.loads(text)
    assert loaded["varying"] == summary.varying(runs)
    groups = {(g["settings"]["depth"], g["settings"]["variant"], g["settings"]["norm"], g["settings"]["optimizer"],
               g["settings"]["lr"], g["settings"]["shortcut"]): g for g in loaded["groups"]}
    no_stats = groups[(14, "residual", "batch", "sgd", 0.1, None)]["metrics"]["grad_ratio_init"]
    assert no_stats["values"][0] > 0 and no_stats["values"][1] is None and no_stats["mean"] is None
    diverged = groups[(8, "plain", "none", "sgd", 1e6, None)]
    assert diverged["metrics"]["diverged"] == 1 and diverged["metrics"]["final_train_loss"]["mean"] is None
    assert groups[(8, "residual", "batch", "sgd", 0.1, None)]["settings"]["betas"] == [0.9, 0.999]


def test_groups_are_sorted_by_their_settings(runs):
    chosen = _select(runs, depth=8, variant="residual", lr=0.1, shortcut=None, norm="batch")
    assert [group["settings"]["optimizer"] for group in summary.summary_json(chosen)["groups"]] == ["adam", "sgd"]


def test_summary_json_keeps_integer_settings_integers(runs):
    settings = summary.summary_json(runs)["groups"][0]["settings"]
    for name in ("width", "image_size", "batch_size", "steps", "warmup_steps"):
        assert isinstance(settings[name], int), (name, settings[name])


# -- tables ------------------------------------------------------------------------

def test_with_configuration_names_the_other_varying_settings(runs):
    assert (summary.with_configuration(_base(runs))["configuration"] == "").all()
    chosen = runs[runs["variant"].notna() & (runs["shortcut"] != "B")]
    assert summary.varying(chosen) == ["depth", "variant", "norm", "optimizer", "lr"]
    text = summary.with_configuration(chosen).set_index("run_id")["configuration"]
    common = {"norm": "batch", "optimizer": "sgd", "lr": 0.1}  # each setting's most common value among these runs
    for name, value in common.items():
        assert chosen[name].value_counts().idxmax() == value
    for run in chosen.itertuples():
        assert text[run.run_id] == ", ".join(f"{name}={getattr(run, name)}" for name in common
                                             if getattr(run, name) != common[name])
    assert set(text) == {"", "optimizer=adam", "norm=none", "norm=none, lr=1000000.0"}
    assert _select(summary.with_configuration(runs), shortcut="B")["configuration"].iloc[0] == "shortcut=B"


def test_count_table_counts_runs_by_configuration_variant_depth_and_status(runs):
    counts = summary.count_table(runs)
    assert list(counts.columns) == ["complete", "diverged", "failed", "unreadable"]
    assert counts.index.names == ["configuration", "variant", "depth"]
    assert counts.to_numpy().sum() == len(runs)
    configured = summary.with_configuration(runs)
    for run in configured[configured["variant"].notna()].itertuples():
        same = configured[(configured["configuration"] == run.configuration) & (configured["variant"] == run.variant)
                          & (configured["depth"] == run.depth)]
        row = counts.loc[(run.configuration, run.variant, run.depth)]
        assert row[run.status] == (same["status"] == run.status).sum()
        assert row.sum() == len(same)
    base = summary.count_table(_base(runs))
    assert base.loc[("", "residual", 8), "complete"] == 2 and base.loc[("", "plain", 14), "complete"] == 1
    assert summary.count_table(runs.iloc[:0]).empty


def test_status_table_lists_every_run(runs):
    table = summary.status_table(runs)
    assert table.index.name == "run_id" and table.index.tolist() == runs["run_id"].tolist()
    assert list(table.columns) == ["configuration", *summary.STATUS_COLUMNS[1:]]
    by_id = runs.set_index("run_id")
    failed = by_id.index[by_id["status"] == "failed"][0]
    assert table.loc[failed, "error"] == "RuntimeError: disk <full> & gone"
    assert (table.loc[by_id["status"] == "complete", "error"] == "").all()
    for name in ("final_train_loss", "grad_ratio_init", "grad_growth_init"):
        np.testing.assert_array_equal(table[name].to_numpy(dtype=float), by_id[name].to_numpy(dtype=float))


def test_group_table_rows_are_the_summary_groups(runs):
    table = summary.group_table(runs)
    groups = summary.summary_json(runs)["groups"]
    assert len(table) == len(groups)
    assert list(table.columns[:5]) == ["depth", "variant", "configuration", "n_seeds", "diverged"]
    assert "final_train_loss mean" in table.columns and "grad_growth_init max" in table.columns
    assert len(table.drop_duplicates(["depth", "variant", "configuration"])) == len(table)  # labels tell groups apart
    row = table[(table["depth"] == 8) & (table["variant"] == "residual")
                & (table["configuration"] == "optimizer=adam")].iloc[0]
    mine = _select(runs, depth=8, variant="residual", optimizer="adam")
    assert row["n_seeds"] == 2 and row["diverged"] == 0
    for name in ("final_train_loss", "final_val_accuracy", "grad_ratio_init", "grad_growth_init"):
        assert row[f"{name} mean"] == pytest.approx(mine[name].mean())
        assert row[f"{name} min"] == mine[name].min() and row[f"{name} max"] == mine[name].max()
    assert table.loc[table["configuration"] == "norm=none, lr=1000000.0", "diverged"].tolist() == [1]
    assert summary.group_table(runs.iloc[:0]).empty


def test_depth_points_keep_complete_runs_and_note_the_others(runs):
    long, note = summary.depth_points(runs, FINAL_LABELS)
    complete = _base(runs)[_base(runs)["status"] == "complete"]  # the one configuration trained at two depths
    assert set(long["run_id"]) == set(complete["run_id"])
    assert len(long) == 2 * len(complete) and set(long["quantity"]) == set(FINAL_LABELS.values())
    by_id = complete.set_index("run_id")
    for row in long.itertuples():
        column = {label: name for name, label in FINAL_LABELS.items()}[row.quantity]
        assert row.value == by_id.loc[row.run_id, column] and row.depth == by_id.loc[row.run_id, "depth"]
    single = ("5 runs of configurations trained at one depth (compared by configuration)")  # adam, no norm, B
    assert note == f"Not shown: 1 diverged, 1 failed, 1 unreadable, {single} (see the table of all runs)"
    long, note = summary.depth_points(runs, FLOW_LABELS, positive=True)
    assert len(long) == 4 * (len(complete) - 1)  # the run without statistics has none of the four
    assert note == (f"Not shown: 1 diverged, 1 failed, 1 unreadable, {single}, 4 values of complete runs that are "
                    "missing or not finite (see the table of all runs)")
    base = _base(runs).copy()
    base.loc[base.index[0], "final_train_loss"] = 0.0
    assert len(summary.depth_points(base, {"final_train_loss": "x"})[0]) == len(base)
    long, note = summary.depth_points(base, {"final_train_loss": "x"}, positive=True)
    assert len(long) == len(base) - 1 and note.startswith("Not shown: 1 values of complete runs")


# -- figures -----------------------------------------------------------------------

def _check_depth_panel(ax, runs, column, *, log):
    """The panel's lines are the per-depth mean over complete seeds (arithmetic on every axis, as summary.json)
    and its bands span min..max."""
    shown = runs[(runs["status"] == "complete") & np.isfinite(runs[column].astype(float))]
    lines, bands = drawn.variant_lines(ax), drawn.bands(ax)
    assert set(lines) == set(bands) == set(shown["variant"])
    for variant, mine in shown.groupby("variant"):
        per_depth = mine.groupby("depth")[column]
        x, y = lines[variant]
        np.testing.assert_array_equal(x, per_depth.mean().index.astype(float))
        np.testing.assert_allclose(y, per_depth.mean().to_numpy(float), rtol=1e-9)
        for depth, values in per_depth:
            np.testing.assert_allclose(bands[variant][depth], (values.min(), values.max()), rtol=1e-9)



def _texts(fig):
    return " ".join(text.get_text() for ax in fig.axes for text in ax.texts)


def _is_log(ax):
    t = ax.yaxis.get_transform().transform(np.array([1.0, 10.0, 100.0]))
    return np.allclose(np.diff(t), np.diff(t)[0]) and not np.allclose(np.diff(t), 9.0)


def test_final_vs_depth_draws_seed_means_ranges_and_seeds(runs):
    base = _base(runs)
    fig = summary.plot_final_vs_depth(base)
    assert isinstance(fig, Figure) and "mean over seeds" in fig.get_suptitle()
    assert [ax.get_title() for ax in fig.axes] == list(FINAL_LABELS.values())
    for ax, column in zip(fig.axes, FINAL_LABELS):
        assert ax.get_xlabel() == "depth (weight layers)" and not _is_log(ax)
        _check_depth_panel(ax, base, column, log=False)
    assert fig.get_supxlabel() == ""
    legend = [text.get_text() for legend in fig.legends for text in legend.get_texts()]
    assert legend == ["residual", "plain"]


def test_final_vs_depth_leaves_single_depth_configurations_to_the_comparison(runs):
    fig = summary.plot_final_vs_depth(runs)
    base = _base(runs)
    assert [ax.get_title() for ax in fig.axes] == list(FINAL_LABELS.values())
    for ax, column in zip(fig.axes, FINAL_LABELS):
        _check_depth_panel(ax, base, column, log=False)
    assert fig.get_supxlabel() == ("Not shown: 1 diverged, 1 failed, 1 unreadable, 5 runs of configurations "
                                   "trained at one depth (compared by configuration) (see the table of all runs)")


def test_configurations_are_compared_side_by_side(runs):
    fig = summary.plot_configurations(runs)
    [ax] = fig.axes
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    finished = summary.with_configuration(runs[runs["variant"].notna() & runs["status"].isin(summary.FINISHED)])
    expected = {f"depth {depth} " + (configuration or summary.COMMON)
                for depth, configuration in zip(finished["depth"], finished["configuration"])}
    diverged = "depth 8 norm=none, lr=1000000.0 diverged 1/1"
    assert set(labels) == expected - {diverged.removesuffix(" diverged 1/1")}
    assert fig.get_supxlabel() == f"Not shown (no finite loss in any seed): {diverged}"  # named, not hidden
    finite = finished[np.isfinite(finished["final_train_loss"].astype(float))]
    means = finite.groupby(["configuration", "depth", "variant"])["final_train_loss"].mean()
    [big_dots, *_] = [c for c in ax.collections if len(c.get_offsets())]
    drawn = sorted(np.asarray(big_dots.get_offsets(), float)[:, 0])
    np.testing.assert_allclose(drawn, sorted(means.to_numpy(float)))
    assert "no finished runs" in _texts(summary.plot_configurations(runs.iloc[:0]))


def test_grad_flow_draws_both_ends_on_log_axes(runs):
    base = _base(runs)
    fig = summary.plot_grad_flow(base)
    assert [ax.get_title() for ax in fig.axes] == list(FLOW_LABELS.values())
    for ax, column in zip(fig.axes, FLOW_LABELS):
        assert _is_log(ax)
        _check_depth_panel(ax, base, column, log=True)
        [reference] = [line for line in ax.lines if line.get_linestyle() == ":"]
        assert list(reference.get_ydata()) == [1.0, 1.0]
    assert fig.get_supxlabel() == ("Not shown: 4 values of complete runs that are missing or not finite "
                                   "(see the table of all runs)")


def test_degradation_curves_are_seed_means_of_the_training_error(runs, metrics):
    base = _base(runs)
    fig = summary.plot_degradation(metrics, base, smooth=2)
    assert [ax.get_title() for ax in fig.axes] == ["plain", "residual"]
    depths = [8, 14]
    colours = dict(zip(depths, sns.color_palette("viridis", len(depths))))
    accuracy = metrics[(metrics["split"] == "train") & (metrics["metric"] == "accuracy")].sort_values("step")
    for ax in fig.axes:
        assert ax.get_ylabel() == "train error (%), mean of 2 steps"
        lines = {depth: line for line in ax.lines for depth, colour in colours.items()
                 if np.allclose(to_rgb(line.get_color()), colour)}
        bands = drawn.bands(ax, colours)
        assert set(lines) == set(bands) == set(depths)
        for depth in depths:
            mine = base[(base["variant"] == ax.get_title()) & (base["depth"] == depth)]
            errors = pd.DataFrame({run_id: 100 * (1 - accuracy.loc[accuracy["run_id"] == run_id, "value"]
                                                  .rolling(2, min_periods=1).mean().to_numpy())
                                   for run_id in mine["run_id"]}, index=[1, 2, 3, 4])
            np.testing.assert_array_equal(lines[depth].get_xdata(), errors.index)
            np.testing.assert_allclose(lines[depth].get_ydata(), errors.mean(axis=1))
            for step in errors.index:
                np.testing.assert_allclose(bands[depth][step], (errors.loc[step].min(), errors.loc[step].max()))


def test_degradation_has_a_row_per_configuration(runs, metrics):
    fig = summary.plot_degradation(metrics, runs)
    complete = runs[runs["variant"].notna() & (runs["status"] == "complete")]
    configurations = summary.with_configuration(complete)["configuration"].unique()
    assert len(configurations) == 4
    assert sorted(ax.get_title() for ax in fig.axes) == sorted(
        f"{variant} | {configuration or summary.COMMON}" for configuration in configurations
        for variant in ("plain", "residual"))


def test_empty_runs_folder_gives_empty_tables_and_figures_that_say_so(tmp_path):
    runs = summary.run_table(tmp_path)
    assert runs.empty and {"run_id", "status", "variant", "depth", *VALUES} <= set(runs.columns)
    assert summary.varying(runs) == [] and summary.summary_json(runs) == {"varying": [], "groups": []}
    assert summary.count_table(runs).empty and summary.group_table(runs).empty and summary.status_table(runs).empty
    figures = [summary.plot_final_vs_depth(runs), summary.plot_grad_flow(runs),
               summary.plot_degradation(summary.load_metrics(tmp_path), runs)]
    assert [_texts(fig) for fig in figures] == ["no complete runs with these values"] * 2 + ["no training metrics"]
    for fig in figures:
        assert isinstance(fig, Figure) and fig.get_suptitle() and len(fig.axes) == 1


def test_summary_notebook_is_short_calls_with_parameters_and_no_outputs():
    notebook = nbformat.read("notebooks/summary.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0].source.strip() == 'runs_dir = "runs"'
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None
        assert len(cell.source.splitlines()) <= 5
    calls = " ".join(cell.source for cell in code)
    for name in ("run_table", "load_metrics", "varying", "count_table", "group_table", "plot_final_vs_depth",
                 "plot_degradation", "plot_grad_flow", "status_table"):
        assert f"summary.{name}(" in calls
