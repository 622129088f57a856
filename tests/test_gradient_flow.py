import math

import numpy as np
import pandas as pd
import pytest

from analysis import gradient_flow
from analysis.gradient_flow import FLAT, FLAT_BAND, GROWS, SHRINKS, GrowthFit, direction, first_to_last, fit_growth

STATS_COLUMNS = ["run_id", "step", "module", "module_type", "index", "call", "kind", "stat", "value", "param"]


def test_fit_recovers_a_planted_geometric_profile():
    # Norm multiplied by 1.5 per layer towards the input: layer l has 1.5 ** (L - l).
    values = [1.5 ** (6 - layer) for layer in range(1, 7)]
    fit = fit_growth(values)
    assert fit.factor == pytest.approx(1.5) and fit.r2 == pytest.approx(1.0) and fit.n_layers == 6
    assert fit.end_to_end == pytest.approx(1.5 ** 5)
    assert direction(fit) == GROWS
    shrinking = fit_growth(values[::-1])
    assert shrinking.factor == pytest.approx(1 / 1.5) and direction(shrinking) == SHRINKS
    assert first_to_last(values) == pytest.approx(1.5 ** 5)


def test_fit_matches_numpy_least_squares_on_a_noisy_profile():
    rng = np.random.default_rng(3)
    values = np.exp(0.2 - 0.07 * np.arange(1, 21) + 0.3 * rng.standard_normal(20))
    slope, intercept = np.polyfit(np.arange(1, 21), np.log(values), 1)
    predicted = intercept + slope * np.arange(1, 21)
    r2 = 1 - ((np.log(values) - predicted) ** 2).sum() / ((np.log(values) - np.log(values).mean()) ** 2).sum()
    fit = fit_growth(values)
    assert fit.factor == pytest.approx(math.exp(-slope)) and fit.r2 == pytest.approx(r2)


def test_wording_thresholds_are_the_named_band():
    layers = 11  # ten steps between the first and the last layer
    just_above = GrowthFit((FLAT_BAND * 1.01) ** (1 / 10), 1.0, layers)
    just_below = GrowthFit((FLAT_BAND * 0.99) ** (1 / 10), 1.0, layers)
    assert direction(just_above) == GROWS and direction(just_below) == FLAT
    assert direction(GrowthFit((1 / FLAT_BAND / 1.01) ** (1 / 10), 1.0, layers)) == SHRINKS
    assert direction(GrowthFit(1.0, 1.0, layers)) == FLAT
    assert direction(GrowthFit(math.nan, math.nan, layers)) == ""


def test_fit_refuses_profiles_it_cannot_describe():
    for values in ([], [1.0], [1.0, 0.0, 2.0], [1.0, math.inf], [1.0, math.nan, 3.0]):
        fit = fit_growth(values)
        assert math.isnan(fit.factor) and math.isnan(fit.r2) and fit.n_layers == len(values)
    flat = fit_growth([2.0, 2.0, 2.0])
    assert flat.factor == pytest.approx(1.0) and flat.r2 == 1.0 and direction(flat) == FLAT
    assert math.isnan(first_to_last([1.0]))


def planted_stats(grad_profiles, weight_norm=2.0, classifier=(5.0, 7.0)):
    """Stem, two branch convs, a shortcut conv (not main path) and the classifier; two steps per run."""
    rows = []
    for run_id, per_step in grad_profiles.items():
        for (step, profile), fc in zip(per_step.items(), classifier):
            modules = [("stem.0", 0), ("stages.0.0.branch.0", 3), ("stages.0.0.branch.3", 6)]
            for (module, index), value in zip(modules, profile):
                rows.append((run_id, step, module, "Conv2d", index, 0, "param_grad", "norm", value, "weight"))
                rows.append((run_id, step, module, "Conv2d", index, 0, "weight", "norm", weight_norm * (index + 1),
                             "weight"))
                rows.append((run_id, step, module, "Conv2d", index, 0, "param_grad", "norm", 99.0, "bias"))
            rows.append((run_id, step, "stages.0.0.shortcut.0", "Conv2d", 8, 0, "param_grad", "norm", 1e6, "weight"))
            rows.append((run_id, step, "fc", "Linear", 10, 0, "param_grad", "norm", fc, "weight"))
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def test_flow_table_uses_main_path_convs_and_reports_the_classifier_apart():
    stats = planted_stats({"a": {1: (8.0, 4.0, 2.0), 30: (1.0, 1.0, 1.0)}, "b": {1: (1.0, 2.0, 4.0), 30: (2.0, 2.0, 2.0)}})
    table = gradient_flow.flow_table(stats).set_index(["run_id", "step"])
    assert table.loc[("a", 1), "ratio"] == pytest.approx(4.0)  # stem over last conv, not over fc or the shortcut
    assert table.loc[("a", 1), "growth"] == pytest.approx(2.0) and table.loc[("a", 1), "direction"] == GROWS
    assert table.loc[("b", 1), "growth"] == pytest.approx(0.5) and table.loc[("b", 1), "direction"] == SHRINKS
    assert table.loc[("a", 30), "direction"] == FLAT and table.loc[("a", 30), "n_layers"] == 3
    assert table.loc[("a", 1), "classifier_grad_norm"] == 5.0 and table.loc[("a", 30), "classifier_grad_norm"] == 7.0
    # Scale-free: g * ||W|| with ||W|| = 2, 8, 14 for indices 0, 3, 6.
    scaled = np.array([8.0 * 2, 4.0 * 8, 2.0 * 14])
    assert table.loc[("a", 1), "scaled_ratio"] == pytest.approx(scaled[0] / scaled[-1])
    assert table.loc[("a", 1), "scaled_growth"] == pytest.approx(fit_growth(scaled).factor)


def test_profiles_number_layers_in_forward_order_and_at_ends_picks_first_and_last_steps():
    stats = planted_stats({"a": {1: (8.0, 4.0, 2.0), 30: (1.0, 1.0, 1.0)}})
    profile = gradient_flow.profiles(stats)
    assert profile[profile["step"] == 1]["module"].tolist() == ["stem.0", "stages.0.0.branch.0",
                                                                 "stages.0.0.branch.3"]
    assert profile["layer"].tolist() == [1, 2, 3, 1, 2, 3]
    assert profile["scaled"].tolist()[:3] == [16.0, 32.0, 28.0]
    ends = gradient_flow.at_ends(gradient_flow.flow_table(stats))
    assert ends[["step", "end"]].values.tolist() == [[1, "init"], [30, "final"]]
    assert gradient_flow.flow_table(stats.iloc[:0]).empty
