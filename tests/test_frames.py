import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.frames import holds_for_every_seed, setting_columns, spread, to_json_value, varying_settings
from analysis.outcomes import group_records, group_runs


def test_spread_matches_numpy_and_gives_sd_from_three_values():
    values = [0.5, 0.25, 1.5]
    found = spread(values)
    assert found["mean"] == pytest.approx(np.mean(values)) and found["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (found["min"], found["max"], found["n"], found["values"]) == (0.25, 1.5, 3, values)
    two = spread([1.0, 3.0])
    assert two["mean"] == 2.0 and math.isnan(two["sd"]) and two["n"] == 2
    assert math.isnan(spread([1.0, math.nan, 2.0])["mean"]) and spread([])["n"] == 0


def test_a_comparison_holds_only_when_every_seed_agrees():
    assert holds_for_every_seed([2, 3, 4], [1, 2, 3]) is True
    assert holds_for_every_seed([1, 2, 3], [2, 3, 4]) is False
    assert holds_for_every_seed([2, 1, 4], [1, 2, 3]) is None
    assert holds_for_every_seed([2, math.nan], [1, 1]) is None and holds_for_every_seed([], []) is None
    with pytest.raises(ValueError):
        holds_for_every_seed([1, 2], [1])


def test_json_values_are_strict_json():
    value = to_json_value({"a": math.nan, "b": [np.float32(1.5), np.int64(2), math.inf], "c": (1, None), 3: pd.NA})
    assert value == {"a": None, "b": [1.5, 2, None], "c": [1, None], "3": None}
    json.dumps(value, allow_nan=False)


def test_settings_exclude_the_seed_and_bookkeeping():
    runs = pd.DataFrame({"depth": [8, 8], "variant": ["plain", "plain"], "seed": [0, 1], "device": ["cpu", "cuda"],
                         "optimizer": ["sgd", "adam"], "betas": [(0.9, 0.999), (0.9, 0.999)]})
    settings = setting_columns(runs, ["depth", "residual", "seed", "device", "optimizer", "betas", "missing"])
    assert settings == ["depth", "variant", "optimizer", "betas"]
    assert varying_settings(runs, settings) == ["optimizer"]


def test_runs_of_different_configurations_are_never_averaged():
    runs = pd.DataFrame({"run_id": ["a0", "a1", "b0", "b1"], "seed": [0, 1, 1, 0], "optimizer": ["sgd", "sgd", "adam", "adam"],
                         "betas": [(0.9, 0.999)] * 4})
    values = pd.DataFrame({"run_id": ["a0", "a1", "b0", "b1"], "loss": [1.0, 2.0, 10.0, 20.0],
                           "diverged": [0.0, 0.0, 1.0, 0.0]})
    groups = group_records(runs, values, ["optimizer", "betas"], names=["loss", "diverged"])
    assert [g["settings"] for g in groups] == [{"optimizer": "adam", "betas": [0.9, 0.999]},
                                               {"optimizer": "sgd", "betas": [0.9, 0.999]}]
    adam, sgd = groups
    assert adam["seeds"] == [0, 1] and adam["metrics"]["loss"]["values"] == [20.0, 10.0]  # in seed order
    assert adam["metrics"]["loss"]["mean"] == 15.0 and sgd["metrics"]["loss"]["mean"] == 1.5
    assert adam["metrics"]["diverged"] == 1 and sgd["n_seeds"] == 2
    assert [len(members) for _, members in group_runs(runs, [])] == [4]
