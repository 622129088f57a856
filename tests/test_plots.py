import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.hooks import STATS  # noqa: E402

STEPS = [0, 10, 20, 30, 40, 50]
# (module, module_type, forward index); the residual network also has a projection shortcut.
MODULES = [
    ("stem.0", "Conv2d", 0), ("stem.1", "BatchNorm2d", 1), ("stem.2", "ReLU", 2),
    ("stages.0.0.branch.0", "Conv2d", 3), ("stages.0.0.branch.1", "BatchNorm2d", 4),
    ("stages.0.0.shortcut.0", "Conv2d", 5), ("stages.0.0.shortcut.1", "BatchNorm2d", 6),
    ("stages.0.0.relu", "ReLU", 7), ("fc", "Linear", 9),
]


def _value(variant, step, index, salt):
    """A distinct, positive, reproducible value for every row."""
    return (1 + index) * (2.0 if variant == "plain" else 1.0) * (1 + step / 100) * salt


def make_stats(variants=("residual", "plain")):
    rows = []
    for variant in variants:
        for step in STEPS:
            for module, module_type, index in MODULES:
                if variant == "plain" and ".shortcut" in module:
                    continue
                for stat, salt in (("std", 1.0), ("dead_fraction", 0.01)):
                    rows.append((variant, step, module, module_type, index, 0, "activation", stat,
                                 _value(variant, step, index, salt), None))
                if module_type in ("Conv2d", "Linear"):
                    rows.append((variant, step, module, module_type, index, 0, "param_grad", "norm",
                                 _value(variant, step, index, 0.1), "weight"))
                    rows.append((variant, step, module, module_type, index, 0, "param_grad", "norm",
                                 99.0, "bias"))
                    rows.append((variant, step, module, module_type, index, 0, "update", "ratio",
                                 _value(variant, step, index, 1e-3), "weight"))
            if variant == "residual":
                rows.append((variant, step, "stages.0.0", "BasicBlock", 8, 0, "block", "ratio", 0.5 + step / 100, None))
                rows.append((variant, step, "stages.0.1", "BasicBlock", 12, 0, "block", "ratio", 0.25, None))
                rows.append((variant, step, "stages.0.0", "BasicBlock", 8, 0, "block", "cosine", 0.1, None))
            rows.append((variant, step, "", "", -1, 0, "global", "grad_norm", 1.0, None))
    return pd.DataFrame(rows, columns=["variant", "step", "module", "module_type", "index", "call", "kind",
                                       "stat", "value", "param"])


def make_metrics(steps=20, diverge_at=None):
    rows = []
    for variant, scale in (("residual", 1.0), ("plain", 2.0)):
        for step in range(1, steps + 1):
            loss = scale * (3 - step / steps) + 0.1 * math.sin(step)
            if variant == "plain" and diverge_at is not None and step >= diverge_at:
                loss = 1e6 if step < steps else math.inf
            rows += [(variant, step, "train", "loss", loss), (variant, step, "train", "accuracy", step / steps / scale)]
            if step % 5 == 0:
                rows += [(variant, step, "val", "loss", loss + 0.2), (variant, step, "val", "accuracy", step / 40)]
    return pd.DataFrame(rows, columns=["variant", "step", "split", "metric", "value"])


def _lines(ax):
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


def _texts(fig):
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def _assert_labelled(fig):
    assert fig.get_suptitle()
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel() and ax.get_ylabel()


def test_stat_names_exist_in_the_hook_monitor():
    for kind, stat in (plots.ACTIVATION_STD, plots.DEAD_FRACTION, plots.GRAD_NORM, plots.UPDATE_RATIO,
                       plots.BLOCK_RATIO):
        assert stat in STATS[kind]


def test_layer_rows_number_main_path_layers_in_forward_order():
    rows = plots.weight_layers(make_stats(), plots.GRAD_NORM)
    assert set(rows["param"]) == {"weight"}
    assert not rows["module"].str.contains("shortcut").any()
    layers = rows[rows["step"] == 0].set_index(["variant", "module"])["layer"]
    for variant in ("residual", "plain"):
        assert layers[variant].to_dict() == {"stem.0": 1, "stages.0.0.branch.0": 2, "fc": 3}


def test_pick_steps_spreads_and_keeps_ends():
    assert plots.pick_steps(STEPS, 4) == [0, 20, 30, 50]
    assert plots.pick_steps([5, 1, 3], 4) == [1, 3, 5]
    assert plots.pick_steps(pd.Series([7, 7, 7]), 4) == [7]
    assert plots.pick_steps([], 4) == []


def test_grad_norm_lines_are_the_frames_values():
    stats = make_stats()
    fig = plots.grad_norm_by_depth(stats)
    assert isinstance(fig, Figure)
    _assert_labelled(fig)
    assert [ax.get_title() for ax in fig.axes] == ["residual", "plain"]
    for ax, variant in zip(fig.axes, ("residual", "plain")):
        assert ax.get_yscale() == "log"
        lines = _lines(ax)
        assert list(lines) == [f"step {s}" for s in plots.pick_steps(STEPS)]
        for step in plots.pick_steps(STEPS):
            expected = stats[(stats["variant"] == variant) & (stats["step"] == step) & (stats["kind"] == "param_grad")
                             & (stats["param"] == "weight") & ~stats["module"].str.contains("shortcut")]
            expected = expected.sort_values("index")["value"].to_numpy()
            x, y = lines[f"step {step}"]
            np.testing.assert_array_equal(x, [1, 2, 3])
            np.testing.assert_allclose(y, expected)


def test_grad_norm_at_chosen_steps():
    fig = plots.grad_norm_by_depth(make_stats(), steps=[10])
    assert list(_lines(fig.axes[0])) == ["step 10"]
    np.testing.assert_allclose(_lines(fig.axes[1])["step 10"][1],
                               [_value("plain", 10, i, 0.1) for i in (0, 3, 9)])


def test_activation_std_uses_norm_outputs_and_falls_back_to_convs():
    stats = make_stats()
    fig = plots.activation_std_by_depth(stats)
    _assert_labelled(fig)
    x, y = _lines(fig.axes[0])["step 50"]
    np.testing.assert_array_equal(x, [1, 2])  # stem.1 and branch.1; the shortcut's norm is left out
    np.testing.assert_allclose(y, [_value("residual", 50, i, 1.0) for i in (1, 4)])
    without_norm = stats[~((stats["variant"] == "plain") & (stats["module_type"] == "BatchNorm2d"))]
    fig = plots.activation_std_by_depth(without_norm)
    x, y = _lines(fig.axes[1])["step 0"]
    np.testing.assert_allclose(y, [_value("plain", 0, i, 1.0) for i in (0, 3)])  # conv outputs
    assert "conv" in fig.get_suptitle()


def test_dead_fraction_lines_are_relu_values():
    fig = plots.dead_fraction_by_depth(make_stats())
    _assert_labelled(fig)
    for ax, variant in zip(fig.axes, ("residual", "plain")):
        x, y = _lines(ax)["step 20"]
        np.testing.assert_array_equal(x, [1, 2])
        np.testing.assert_allclose(y, [_value(variant, 20, i, 0.01) for i in (2, 7)])
        assert ax.get_ylim() == (-0.02, 1.02)


def test_update_heatmap_array_is_the_pivot():
    stats = make_stats()
    fig = plots.update_ratio_heatmap(stats)
    _assert_labelled(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["residual", "plain"]
    for ax, variant in zip(panels, ("residual", "plain")):
        mine = stats[(stats["variant"] == variant) & (stats["kind"] == "update") & ~stats["module"].str.contains("shortcut")]
        direct = mine.pivot(index="index", columns="step", values="value").sort_index().to_numpy()
        mesh = ax.collections[0]
        np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(direct.shape), direct)
        assert mesh.norm.vmin == pytest.approx(stats.loc[stats["kind"] == "update", "value"].min())
    pivot = plots.update_ratio_pivot(plots.weight_layers(stats, plots.UPDATE_RATIO), "plain")
    assert list(pivot.index) == [1, 2, 3] and list(pivot.columns) == STEPS


def test_block_ratio_only_for_residual_blocks():
    stats = make_stats()
    fig = plots.block_ratio_by_depth(stats)
    _assert_labelled(fig)
    assert [ax.get_title() for ax in fig.axes] == ["residual"]
    x, y = _lines(fig.axes[0])["step 50"]
    np.testing.assert_array_equal(x, [1, 2])
    np.testing.assert_allclose(y, [1.0, 0.25])
    plain = plots.block_ratio_by_depth(make_stats(("plain",)))
    _assert_labelled(plain)
    assert "no residual blocks" in _texts(plain)


def test_training_curves_draw_the_metrics():
    metrics = make_metrics()
    fig = plots.training_curves(metrics, smooth=4)
    _assert_labelled(fig)
    assert fig.axes[0].get_yscale() == "linear"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["train loss", "validation loss", "train accuracy", "validation accuracy"]
    train_loss = _lines(fig.axes[0])
    series = metrics[(metrics["variant"] == "plain") & (metrics["split"] == "train") & (metrics["metric"] == "loss")]
    raw = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("_")]
    np.testing.assert_allclose(raw[1].get_ydata(), series["value"])
    np.testing.assert_array_equal(raw[1].get_xdata(), series["step"])
    np.testing.assert_allclose(train_loss["plain (mean of 4)"][1], series["value"].rolling(4, min_periods=1).mean())
    val_accuracy = _lines(fig.axes[3])
    np.testing.assert_array_equal(val_accuracy["residual"][0], [5, 10, 15, 20])
    np.testing.assert_allclose(val_accuracy["residual"][1], [5 / 40, 10 / 40, 15 / 40, 20 / 40])


def test_diverged_run_with_few_steps_is_drawn_on_a_log_scale():
    metrics = make_metrics(steps=4, diverge_at=3)
    fig = plots.training_curves(metrics)
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[2].get_yscale() == "linear"
    fig.canvas.draw()


@pytest.mark.parametrize("figure", [plots.grad_norm_by_depth, plots.activation_std_by_depth,
                                    plots.dead_fraction_by_depth, plots.update_ratio_heatmap,
                                    plots.block_ratio_by_depth])
def test_no_statistics_gives_a_labelled_figure_that_says_so(figure):
    empty = make_stats().iloc[:0]
    fig = figure(empty)
    _assert_labelled(fig)
    assert "no " in _texts(fig)
    fig.canvas.draw()


def test_single_recorded_step_and_missing_metrics():
    stats = make_stats()
    one = stats[stats["step"] == 10]
    fig = plots.update_ratio_heatmap(one)
    assert np.asarray(fig.axes[0].collections[0].get_array()).size == 3
    fig.canvas.draw()
    fig = plots.training_curves(make_metrics().query("split == 'train'"))
    assert "no validation loss recorded" in _texts(fig)


def test_non_finite_statistics_of_a_diverging_run_are_left_out():
    stats = make_stats()
    stats.loc[stats["step"] == 50, "value"] = np.inf
    stats.loc[(stats["step"] == 40) & (stats["module"] == "fc"), "value"] = np.nan
    for figure in (plots.grad_norm_by_depth, plots.activation_std_by_depth, plots.dead_fraction_by_depth,
                   plots.update_ratio_heatmap, plots.block_ratio_by_depth):
        fig = figure(stats)
        fig.canvas.draw()
    y = _lines(plots.grad_norm_by_depth(stats).axes[0])["step 50"][1]
    assert np.isnan(y).all()
