"""Depth-study figures: drawn data against direct computations on planted tidy frames.

The frames have the shape of :class:`analysis.study.StudyResult`'s (``variant``,
``seed`` and ``run_id`` in front) with known values for two variants and two
seeds; seed 1's values are three times seed 0's, so the mean line and the
band (min..max over seeds) differ.
"""
import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.frames import BLOCK_RATIO, DEAD_FRACTION, GRAD_NORM, PALETTE, UPDATE_RATIO, WEIGHT_NORM  # noqa: E402
from analysis.hooks import STATS  # noqa: E402
import drawn  # noqa: E402

VARIANTS = ("residual", "plain")
SEEDS = (0, 1)
STEPS = (1, 11, 21)
# (module, module_type, forward index); the residual network also has a projection shortcut.
MODULES = [
    ("stem.0", "Conv2d", 0), ("stem.1", "BatchNorm2d", 1), ("stem.2", "ReLU", 2),
    ("stages.0.0.branch.0", "Conv2d", 3), ("stages.0.0.branch.1", "BatchNorm2d", 4), ("stages.0.0.branch.2", "ReLU", 5),
    ("stages.0.0.branch.3", "Conv2d", 6), ("stages.0.0.branch.4", "BatchNorm2d", 7),
    ("stages.0.0.shortcut.0", "Conv2d", 8), ("stages.0.0.shortcut.1", "BatchNorm2d", 9),
    ("stages.0.0.relu", "ReLU", 10), ("fc", "Linear", 12),
]
CONVS = ["stem.0", "stages.0.0.branch.0", "stages.0.0.branch.3"]  # main-path convs in forward order
WEIGHT_LAYERS = [*CONVS, "fc"]  # main-path weight layers (the update ratio's median is over these)
RELUS = ["stem.2", "stages.0.0.branch.2", "stages.0.0.relu"]
BLOCKS = [("stages.0.0", 11), ("stages.0.1", 13)]
SCALE = {"param_grad": 0.1, "weight": 2.0, "update": 1e-3, "activation": 0.01, "block": 0.5}
IGNORED = 1e3  # the value of every row a figure must leave out (shortcut convs, biases, second calls)
COLUMNS = ["variant", "seed", "run_id", "step", "module", "module_type", "index", "call", "kind", "stat", "value",
           "param"]


def run_id(variant, seed):
    return f"{variant}-s{seed}"


def planted(kind, variant, seed, step, index):
    """The value of one statistic: distinct per variant, seed, step and layer; seed 1 is 3x seed 0."""
    return SCALE[kind] * (1 + index / 10) * (2.0 if variant == "plain" else 1.0) * (1 + step / 10) * (1 + 2 * seed)


def lr_at(step):
    return 0.1 * (1 - step / 40)


def make_stats(steps_of=None):
    """Tidy statistics of 2 variants x 2 seeds; ``steps_of`` maps a run id to its recorded steps."""
    rows = []
    for variant in VARIANTS:
        for seed in SEEDS:
            tag = (variant, seed, run_id(variant, seed))
            for step in (steps_of or {}).get(run_id(variant, seed), STEPS):
                for module, module_type, index in MODULES:
                    if variant == "plain" and "shortcut" in module:
                        continue
                    shortcut = "shortcut" in module
                    if module_type in ("Conv2d", "Linear"):
                        for kind, stat in (("param_grad", "norm"), ("weight", "norm"), ("update", "ratio")):
                            value = IGNORED if shortcut else planted(kind, variant, seed, step, index)
                            rows.append((*tag, step, module, module_type, index, 0, kind, stat, value, "weight"))
                            rows.append((*tag, step, module, module_type, index, 0, kind, stat, IGNORED, "bias"))
                        rows.append((*tag, step, module, module_type, index, 1, "param_grad", "norm", IGNORED,
                                     "weight"))
                    if module_type == "ReLU":
                        rows.append((*tag, step, module, module_type, index, 0, "activation", "dead_fraction",
                                     planted("activation", variant, seed, step, index), None))
                        rows.append((*tag, step, module, module_type, index, 1, "activation", "dead_fraction",
                                     IGNORED, None))
                    rows.append((*tag, step, module, module_type, index, 0, "activation", "std", IGNORED, None))
                if variant == "residual":
                    for block, index in BLOCKS:
                        rows.append((*tag, step, block, "BasicBlock", index, 0, "block", "ratio",
                                     planted("block", variant, seed, step, index), None))
                        rows.append((*tag, step, block, "BasicBlock", index, 0, "block", "cosine", IGNORED, None))
                rows.append((*tag, step, "", "", -1, 0, "global", "grad_norm", IGNORED, None))
    return pd.DataFrame(rows, columns=COLUMNS).sample(frac=1.0, random_state=0).reset_index(drop=True)


def make_metrics(steps=21):
    rows = []
    for variant in VARIANTS:
        for seed in SEEDS:
            tag = (variant, seed, run_id(variant, seed))
            for step in range(1, steps + 1):
                scale = 2.0 if variant == "plain" else 1.0
                loss = scale * (3 - step / steps) + 0.1 * seed + 0.05 * np.sin(step + seed)
                rows += [(*tag, step, "train", "loss", loss), (*tag, step, "train", "accuracy", step / 40 + 0.1 * seed),
                         (*tag, step, "train", "lr", lr_at(step)), (*tag, step, "train", "time", 0.5 * step)]
                if step % 5 == 0:
                    rows += [(*tag, step, "val", "loss", loss + 0.2),
                             (*tag, step, "val", "accuracy", step / 50 + 0.05 * seed)]
    return pd.DataFrame(rows, columns=["variant", "seed", "run_id", "step", "split", "metric", "value"])


def make_responses():
    rows = [(variant, seed, run_id(variant, seed), layer, f"m{layer}", "BatchNorm2d",
             (layer + 1) * (1 + 2 * seed) * (2.0 if variant == "plain" else 1.0))
            for variant in VARIANTS for seed in SEEDS for layer in (1, 2, 3)]
    return pd.DataFrame(rows, columns=["variant", "seed", "run_id", "layer", "module", "module_type", "std"])


# -- direct computations and drawn data ----------------------------------------------

def expected_rows(stats, kind, stat, modules, *, param=None):
    """Rows of one statistic for ``modules`` (first call only), with ``x`` their 1-based position in ``modules``."""
    rows = stats[(stats["kind"] == kind) & (stats["stat"] == stat) & stats["module"].isin(modules)
                 & (stats["call"] == 0)]
    if param is not None:
        rows = rows[rows["param"] == param]
    return rows.assign(x=rows["module"].map({module: i + 1 for i, module in enumerate(modules)}))


def check_panel(ax, expected, *, log, x="x", y="value"):
    """Each variant's line is the mean over seeds of ``expected`` at each x (arithmetic on every axis) and its
    band spans min..max over seeds."""
    lines, bands = drawn.variant_lines(ax), drawn.bands(ax)
    assert set(lines) == set(bands) == set(expected["variant"])
    for variant, mine in expected.groupby("variant"):
        per_x = mine.groupby(x)[y]
        drawn_x, drawn_y = lines[variant]
        np.testing.assert_array_equal(drawn_x, per_x.mean().index.astype(float))
        np.testing.assert_allclose(drawn_y, per_x.agg("mean").to_numpy(float), rtol=1e-9)
        assert len(bands[variant]) == per_x.ngroups
        for at, values in per_x:
            np.testing.assert_allclose(bands[variant][at], (values.min(), values.max()), rtol=1e-9)


def is_log(ax):
    """Whether the y axis is logarithmic (seaborn draws every axis on a function scale)."""
    t = ax.yaxis.get_transform().transform(np.array([1.0, 10.0, 100.0]))
    return bool(np.isclose(t[1] - t[0], t[2] - t[1]))


def texts(fig):
    return " ".join(text.get_text() for ax in fig.axes for text in ax.texts)


def at_end(rows, end):
    return rows[rows["step"] == (STEPS[0] if end == "init" else STEPS[-1])]


END_TITLES = {"init": "first recorded step", "final": "last recorded step"}


# -- figures ------------------------------------------------------------------------

def test_planted_statistic_names_are_the_hook_monitors():
    for kind, stat in (GRAD_NORM, WEIGHT_NORM, UPDATE_RATIO, DEAD_FRACTION, BLOCK_RATIO):
        assert stat in STATS[kind]
    planted_names = set(zip(make_stats()["kind"], make_stats()["stat"]))
    assert {GRAD_NORM, WEIGHT_NORM, UPDATE_RATIO, DEAD_FRACTION, BLOCK_RATIO} <= planted_names



def test_grad_norm_by_layer_main_path_convs_at_both_ends():
    stats = make_stats()
    fig = plots.grad_norm_by_layer(stats)
    assert isinstance(fig, Figure) and fig.get_suptitle().startswith("Gradient flow")
    grads = expected_rows(stats, "param_grad", "norm", CONVS, param="weight")
    weights = expected_rows(stats, "weight", "norm", CONVS, param="weight")
    scaled = grads.merge(weights[["run_id", "step", "module", "value"]], on=["run_id", "step", "module"],
                         suffixes=("", "_weight"))
    scaled = scaled.assign(value=scaled["value"] * scaled["value_weight"])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert len(fig.axes) == 4
    for end, title in END_TITLES.items():
        for quantity, rows in (("||dL/dW||", grads), ("||dL/dW|| x ||W||", scaled)):
            ax = panels[f"{title} | {quantity}"]
            assert is_log(ax) and ax.get_xlabel() == "main-path conv (forward order)"
            assert len(at_end(rows, end)) == len(VARIANTS) * len(SEEDS) * len(CONVS)
            check_panel(ax, at_end(rows, end), log=True)
            assert set(drawn.variant_lines(ax)) == set(VARIANTS)  # drawn in the palette's colours
    legend = [text.get_text() for legend in fig.legends for text in legend.get_texts()]
    assert legend == ["residual", "plain"]
    assert PALETTE == {"residual": "#0072B2", "plain": "#D55E00"}


def test_dead_fraction_by_layer_per_relu_at_both_ends():
    stats = make_stats()
    fig = plots.dead_fraction_by_layer(stats)
    assert [ax.get_title() for ax in fig.axes] == list(END_TITLES.values())
    rows = expected_rows(stats, "activation", "dead_fraction", RELUS)
    for ax, end in zip(fig.axes, END_TITLES):
        assert not is_log(ax) and ax.get_xlabel() == "ReLU (forward order)"
        check_panel(ax, at_end(rows, end), log=False)


def test_block_ratio_by_depth_residual_blocks_only_with_a_reference_at_one():
    stats = make_stats()
    fig = plots.block_ratio_by_depth(stats)
    assert [ax.get_title() for ax in fig.axes] == list(END_TITLES.values())
    rows = expected_rows(stats, "block", "ratio", [block for block, _ in BLOCKS])
    for ax, end in zip(fig.axes, END_TITLES):
        assert is_log(ax)
        check_panel(ax, at_end(rows, end), log=True)
        assert set(drawn.variant_lines(ax)) == {"residual"}
        [reference] = [line for line in ax.lines if line.get_linestyle() == ":"]
        assert list(reference.get_ydata()) == [1.0, 1.0]
    plain = plots.block_ratio_by_depth(stats[stats["variant"] == "plain"])
    assert "no residual blocks recorded" in texts(plain)


def test_update_ratio_by_step_median_layer_raw_and_over_lr():
    stats, metrics = make_stats(), make_metrics()
    fig = plots.update_ratio_by_step(stats, metrics)
    assert [ax.get_title() for ax in fig.axes] == ["||dW|| / ||W||", "(||dW|| / ||W||) / lr"]
    rows = expected_rows(stats, "update", "ratio", WEIGHT_LAYERS, param="weight")
    median = rows.groupby(["variant", "seed", "run_id", "step"], as_index=False)["value"].median()
    over_lr = median.assign(value=median["value"] / median["step"].map(lr_at))
    for ax, expected in zip(fig.axes, (median, over_lr)):
        assert is_log(ax) and ax.get_xlabel() == "step"
        check_panel(ax, expected, log=True, x="step")
    # one planted value by hand: residual, step 11; the median of four layers is the mean of the middle two
    per_seed = [np.mean([planted("update", "residual", seed, 11, index) for index in (3, 6)]) / lr_at(11)
                for seed in SEEDS]
    x, y = drawn.variant_lines(fig.axes[1])["residual"]
    assert y[list(x).index(11)] == pytest.approx(np.mean(per_seed))
    assert drawn.bands(fig.axes[1])["residual"][11] == pytest.approx((min(per_seed), max(per_seed)))


def test_update_ratio_over_lr_leaves_out_steps_without_a_learning_rate():
    fig = plots.update_ratio_by_step(make_stats(), make_metrics(steps=20))  # no lr recorded at step 21
    raw, over_lr = (drawn.variant_lines(ax)["plain"][0] for ax in fig.axes)
    assert list(raw) == list(STEPS) and list(over_lr) == list(STEPS[:-1])
    fig.savefig(io.BytesIO(), format="png")  # drawing a log axis works too


def test_response_std_by_layer_means_over_seeds():
    responses = make_responses()
    fig = plots.response_std_by_layer(responses)
    [ax] = fig.axes
    assert not is_log(ax) and ax.get_ylabel() == "std of response" and "eval mode" in fig.get_suptitle()
    check_panel(ax, responses, log=False, x="layer", y="std")


def test_training_curves_smoothed_train_and_raw_validation():
    metrics = make_metrics()
    fig = plots.training_curves(metrics, smooth=4)
    assert fig.get_suptitle().startswith("Training curves")
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert sorted(panels) == sorted(f"{panel} | {metric}" for panel in ("train (rolling mean of 4)", "validation")
                                    for metric in ("loss", "accuracy"))  # lr and time are not drawn
    for metric in ("loss", "accuracy"):
        train = metrics[(metrics["split"] == "train") & (metrics["metric"] == metric)].sort_values("step")
        train = train.assign(value=train.groupby("run_id")["value"].transform(
            lambda series: series.rolling(4, min_periods=1).mean()))
        val = metrics[(metrics["split"] == "val") & (metrics["metric"] == metric)]
        check_panel(panels[f"train (rolling mean of 4) | {metric}"], train, log=False, x="step")
        check_panel(panels[f"validation | {metric}"], val, log=False, x="step")
        assert not is_log(panels[f"validation | {metric}"])


def test_training_curves_default_window_and_a_diverged_seed():
    metrics = make_metrics()
    diverged = (metrics["run_id"] == run_id("plain", 1)) & (metrics["step"] == 21) & (metrics["metric"] == "loss")
    metrics.loc[diverged, "value"] = np.inf
    fig = plots.training_curves(metrics)  # 21 steps: a window of max(1, 21 // 25) = 1
    ax = {ax.get_title(): ax for ax in fig.axes}["train (rolling mean of 1) | loss"]
    x, y = drawn.variant_lines(ax)["plain"]
    only = metrics[(metrics["run_id"] == run_id("plain", 0)) & (metrics["step"] == 21) & (metrics["metric"] == "loss")]
    assert x[-1] == 21 and y[-1] == pytest.approx(only["value"].iloc[0])  # the non-finite seed is left out
    assert np.isfinite(y).all()


def test_ends_are_each_runs_own_first_and_last_recorded_step():
    # one run stopped early, another started recording late
    stats = make_stats(steps_of={run_id("residual", 1): (1, 11), run_id("plain", 0): (11, 21)})
    fig = plots.dead_fraction_by_layer(stats)
    rows = expected_rows(stats, "activation", "dead_fraction", RELUS)
    for ax, end in zip(fig.axes, ("min", "max")):
        at_end = rows[rows["step"] == rows.groupby("run_id")["step"].transform(end)]
        check_panel(ax, at_end, log=False)
    steps = {end: rows[rows["step"] == rows.groupby("run_id")["step"].transform(end)].groupby("run_id")["step"].first()
             for end in ("min", "max")}
    assert steps["min"].to_dict() == {"plain-s0": 11, "plain-s1": 1, "residual-s0": 1, "residual-s1": 1}
    assert steps["max"].to_dict() == {"plain-s0": 21, "plain-s1": 21, "residual-s0": 21, "residual-s1": 11}


def test_seed_plot_facets_and_drops_values_a_log_axis_cannot_show():
    # three seeds, one far off: mean, median and geometric mean all differ
    frame = pd.DataFrame([(variant, seed, run_id(variant, seed), panel, x,
                           (x + seed ** 3) * (2 if variant == "plain" else 1))
                          for variant in VARIANTS for seed in (0, 1, 2) for panel in ("a", "b") for x in (1, 2, 3)],
                         columns=["variant", "seed", "run_id", "panel", "x", "value"]).astype({"value": float})
    frame.loc[(frame["variant"] == "residual") & (frame["seed"] == 0) & (frame["x"] == 1), "value"] = 0.0
    frame.loc[(frame["variant"] == "plain") & (frame["seed"] == 1) & (frame["x"] == 3), "value"] = np.nan
    fig = plots.seed_plot(frame, "x", "value", col="panel", log_y=True, title="T", xlabel="X", ylabel="Y",
                          marker=False)
    assert fig.get_suptitle() == "T" and fig.get_figwidth() == plots.WIDTH
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    shown = frame[np.isfinite(frame["value"]) & (frame["value"] > 0)]
    for ax, panel in zip(fig.axes, ("a", "b")):
        assert is_log(ax) and ax.get_xlabel() == "X"
        check_panel(ax, shown[shown["panel"] == panel], log=True)
        assert all(line.get_marker() in ("", "None", None) for line in ax.lines)
    linear = plots.seed_plot(frame, "x", "value", title="T", xlabel="X", ylabel="Y")
    assert linear.get_figwidth() == pytest.approx(plots.WIDTH * 0.6)
    assert linear.axes[0].get_ylabel() == "Y" and not is_log(linear.axes[0])
    check_panel(linear.axes[0], frame[np.isfinite(frame["value"])], log=False)  # 0 is kept on a linear axis


@pytest.mark.parametrize("figure, message", [
    (lambda stats, metrics, responses: plots.grad_norm_by_layer(stats), "no gradient statistics recorded"),
    (lambda stats, metrics, responses: plots.dead_fraction_by_layer(stats), "no activation statistics recorded"),
    (lambda stats, metrics, responses: plots.block_ratio_by_depth(stats), "no residual blocks recorded"),
    (lambda stats, metrics, responses: plots.update_ratio_by_step(stats, metrics), "no update statistics recorded"),
    (lambda stats, metrics, responses: plots.training_curves(metrics), "no metrics recorded"),
    (lambda stats, metrics, responses: plots.response_std_by_layer(responses), "no trained weights to measure"),
])
def test_no_rows_gives_a_figure_that_says_so(figure, message):
    fig = figure(make_stats().iloc[:0], make_metrics().iloc[:0], make_responses().iloc[:0])
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert message in texts(fig)
    assert not fig.axes[0].lines and not fig.axes[0].patches
