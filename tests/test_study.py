import dataclasses
import json
import math
import os

import pandas as pd
import pytest

from analysis import study
from analysis.config import TrainConfig, config_fields, settings
from analysis.study import PARAMETERS, STUDY_DEFAULTS, ParameterError, configs_for, validate_parameters
from conftest import TINY_STUDY

TINY = {**TINY_STUDY, "depth": 8, "steps": 6, "stats_every": 3, "val_every": 3, "seeds": 0}


def test_parameters_are_the_training_settings_at_the_documented_study_defaults():
    fields = settings()
    # Every TrainConfig field in its order, but those each run sets: variants and seeds stand in their place.
    assert list(PARAMETERS) == [{"residual": "variants", "seed": "seeds"}.get(name, name) for name in config_fields()
                                ] + ["runs_dir", "findings_path"]
    for name, (default, description) in PARAMETERS.items():
        assert description and "\n" not in description
        if name in fields:
            assert description == fields[name].help, name
            assert default == STUDY_DEFAULTS.get(name, (fields[name].default,))[0], name
    # Each documented difference is one, and says why.
    assert {name: default for name, (default, _) in STUDY_DEFAULTS.items()} == {
        "depth": 50, "width": 8, "stem": "cifar", "batch_size": 32, "steps": 300, "lr": 0.05, "warmup_steps": 30,
        "threads": 1}
    assert {name: fields[name].default for name in STUDY_DEFAULTS} == {
        "depth": 20, "width": None, "stem": None, "batch_size": 64, "steps": 200, "lr": 0.1, "warmup_steps": 0,
        "threads": None}
    assert all(len(reason) > 20 for _, reason in STUDY_DEFAULTS.values())
    params = validate_parameters({})
    assert params.config == study.STUDY_CONFIG == TrainConfig(**{n: d for n, (d, _) in STUDY_DEFAULTS.items()})
    assert params.to_dict() == study.parameter_defaults()


def test_seeds_take_one_int_or_a_list_of_distinct_ints():
    assert validate_parameters({"seeds": 3}).seeds == (3,)
    assert validate_parameters({"seeds": [0, 1, 2]}).seeds == (0, 1, 2)
    assert validate_parameters({"seeds": "[4, 5]"}).seeds == (4, 5)
    for bad in ([], [1, 1], "x", [0.5], True, -1):
        with pytest.raises(ParameterError, match="^seeds: "):
            validate_parameters({"seeds": bad})
    params = validate_parameters({**TINY, "seeds": [0, 1]})
    configs = configs_for(params)
    assert [(c.residual, c.seed) for c in configs] == [(True, 0), (True, 1), (False, 0), (False, 1)]
    assert len(set(study.run_ids_for(params))) == 4


def test_defaults_validate_and_ignore_notebook_state():
    namespace = {**study.parameter_defaults(), "In": ["x"], "Out": {1: 2}, "get_ipython": print, "exit": object(),
                 "quit": object(), "open": open, "_": 3, "_i1": "code", "os": os, "helper": lambda: 1,
                 "TrainConfig": TrainConfig, "params": validate_parameters({}), "frame": pd.DataFrame()}
    assert validate_parameters(namespace) == validate_parameters({}) == validate_parameters(study.parameter_defaults())


def test_values_are_normalised():
    config = validate_parameters({"lr": 1, "milestones": "100, 200", "schedule": "step", "steps": 300}).config
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.milestones == (100, 200)
    assert validate_parameters({"milestones": "[5]", "schedule": "step"}).config.milestones == (5,)
    assert validate_parameters({"milestones": [7, 9], "schedule": "step"}).config.milestones == (7, 9)
    assert validate_parameters({"betas": "0.8, 0.99", "optimizer": "adam"}).config.betas == (0.8, 0.99)
    assert validate_parameters({"betas": [0, 0.5]}).config.betas == (0.0, 0.5)


@pytest.mark.parametrize("name, value, expected", [
    ("depth", 51, ["depth: 51", "18, 34, 50, 101, 152", "6n+2"]),
    ("optimizer", "sgdd", ["optimizer: 'sgdd'", "'sgd', 'adam', 'adamw'"]),
    ("lr", -1, ["lr:", "> 0", "-1"]),
    ("dataset", "nope", ["dataset: 'nope'", "'synthetic'", "'cifar10'"]),
    ("variants", "resid", ["variants: 'resid'", "'both', 'residual', 'plain'"]),
    ("width", 0, ["width:", ">= 1"]),
    ("milestones", "a,b", ["milestones: must be an integer or a list of integers, got 'a,b'"]),
    ("milestones", [1.5], ["milestones: must be an integer or a list of integers, got [1.5]"]),
    ("betas", [0.9], ["betas:", "two numbers in [0, 1)"]),
    ("momentum", 1, ["momentum:", "< 1.0", "got 1.0"]),
    ("runs_dir", None, ["runs_dir:", "folder"]),
    ("zero_init_residual", "yes", ["zero_init_residual:", "True or False"]),
])
def test_bad_values_name_the_parameter_and_allowed_values(name, value, expected):
    with pytest.raises(ParameterError) as caught:
        validate_parameters({name: value})
    message = str(caught.value)
    assert caught.value.name == name and "\n" not in message
    for text in expected:
        assert text in message
    assert caught.value._render_traceback_() == [f"ParameterError: {message}"]


def test_unknown_name_lists_known_parameters():
    with pytest.raises(ParameterError) as caught:
        validate_parameters({"dpeth": 50})
    message = str(caught.value)
    assert caught.value.name == "dpeth"
    assert message.startswith("dpeth: unknown parameter (did you mean 'depth'?)")
    assert message.endswith("known parameters: " + ", ".join(PARAMETERS))


def test_configs_follow_parameters_residual_first():
    params = validate_parameters({**TINY, "zero_init_residual": True, "shortcut": "B", "lr": 0.2})
    residual, plain = configs_for(params)
    assert residual.residual and not plain.residual
    assert residual.zero_init_residual and not plain.zero_init_residual
    for config in (residual, plain):
        assert config.seed == 0
        for name in PARAMETERS:
            if name not in ("variants", "runs_dir", "zero_init_residual", "seeds", "findings_path"):
                assert getattr(config, name) == getattr(params.config, name), name
    skipinit = configs_for(validate_parameters({**TINY, "init": "skipinit"}))
    assert [c.init for c in skipinit] == ["skipinit", "kaiming"]
    assert study.run_ids_for(params) == [residual.run_id(), plain.run_id()]
    assert residual.run_id().startswith("d8-residual-s0-") and plain.run_id().startswith("d8-plain-s0-")
    only_plain = configs_for(dataclasses.replace(params, variants="plain"))
    assert [c.residual for c in only_plain] == [False] and only_plain[0].run_id() == plain.run_id()


def test_config_table_lists_each_variants_settings():
    params = validate_parameters({**TINY, "milestones": [2], "schedule": "step", "runs_dir": "somewhere"})
    table = study.config_table(params)
    assert list(table.columns) == ["residual, seed 0", "plain, seed 0"]
    assert table.loc["run folder", "plain, seed 0"] == os.path.join("somewhere", configs_for(params)[1].run_id())
    assert table.loc["residual", "residual, seed 0"] == True  # noqa: E712
    assert table.loc["milestones", "residual, seed 0"] == "[2]" and table.loc["shortcut", "plain, seed 0"] == "None"
    assert table.loc["depth", "plain, seed 0"] == 8 and table.loc["seed", "plain, seed 0"] == 0


def test_run_study_trains_loads_and_reuses(tmp_path, capsys):
    params = validate_parameters({**TINY, "seeds": [0, 1], "runs_dir": str(tmp_path)})
    result = study.run_study(params, progress=False)
    assert result.variants == ("residual", "plain") and result.seeds == (0, 1) and result.reused == ()
    assert result.runs[["variant", "seed"]].values.tolist() == [["residual", 0], ["residual", 1],
                                                                 ["plain", 0], ["plain", 1]]
    assert (result.runs["status"] == "complete").all()
    assert "residual, seed 1: trained" in capsys.readouterr().out
    for run in result.runs.itertuples():
        record = json.loads((tmp_path / run.run_id / "config.json").read_text())
        assert record == result.records[run.run_id] and record["config"]["seed"] == run.seed
        assert (tmp_path / run.run_id / "model.pt").is_file()
        stored = pd.read_parquet(tmp_path / run.run_id / "metrics.parquet")
        mine = result.metrics[result.metrics["run_id"] == run.run_id]
        assert (mine["variant"] == run.variant).all() and (mine["seed"] == run.seed).all()
        pd.testing.assert_frame_equal(mine.drop(columns=["variant", "seed", "run_id"]).reset_index(drop=True), stored)
        stats = result.stats[result.stats["run_id"] == run.run_id]
        assert sorted(stats["step"].unique()) == [1, 4]
        assert len(stats) == len(pd.read_parquet(tmp_path / run.run_id / "stats.parquet"))
        responses = result.responses[result.responses["run_id"] == run.run_id]
        assert responses["layer"].tolist() == list(range(1, 8))  # the 7 main-path batch norms of depth 8
    assert set(result.stats.loc[result.stats["kind"] == "block", "variant"]) == {"residual"}
    assert study.settings_frame(result)["variant"].tolist() == ["residual", "residual", "plain", "plain"]

    table = study.model_table(result)
    assert table.index.tolist() == [("residual", 0), ("residual", 1), ("plain", 0), ("plain", 1)]
    assert table.loc[("plain", 1), "layers"] == 8 and table.loc[("plain", 1), "status"] == "complete"
    first = result.runs["run_id"].iloc[0]
    assert table.loc[("residual", 0), "parameters"] == result.records[first]["model"]["params"]

    again = study.run_study(params, progress=False)
    assert again.reused == tuple(result.runs["run_id"]) and "reused finished run" in capsys.readouterr().out
    assert {k: r["start_time"] for k, r in again.records.items()} == \
        {k: r["start_time"] for k, r in result.records.items()}
    pd.testing.assert_frame_equal(again.metrics, result.metrics)
    pd.testing.assert_frame_equal(again.responses, result.responses)
    loaded = study.load_study(tmp_path, list(result.runs["run_id"]))
    pd.testing.assert_frame_equal(loaded.stats, result.stats)


def test_layer_responses_are_the_trained_networks_eval_mode_stds(tmp_path):
    """Direct computation: load the weights, eval mode, hook the batch norms, std over the first val images."""
    import torch

    from analysis.data import load_data
    from analysis.train import load_trained

    params = validate_parameters({**TINY, "variants": "plain", "runs_dir": str(tmp_path)})
    run_id = study.run_ids_for(params)[0]
    study.run_study(params, progress=False)
    found = study.layer_responses(tmp_path, run_id, images=16)
    model, config = load_trained(tmp_path, run_id)
    x, _ = next(iter(load_data(config.dataset, seed=config.seed).val_batches(16)))
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.double().std(correction=0).item()))
             for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert not model.training
    assert found["std"].tolist() == pytest.approx(outputs, rel=1e-5)
    assert found["module_type"].eq("BatchNorm2d").all() and found["layer"].tolist() == list(range(1, 8))


def test_without_statistics_the_stats_frame_is_empty(tmp_path):
    params = validate_parameters({**TINY, "variants": "plain", "stats_every": 0, "runs_dir": str(tmp_path)})
    result = study.run_study(params, progress=False)
    assert result.variants == ("plain",) and result.stats.empty
    assert {"variant", "seed", "run_id", "step", "kind", "stat", "value"} <= set(result.stats.columns)
    train_loss = result.metrics[(result.metrics["split"] == "train") & (result.metrics["metric"] == "loss")]
    assert train_loss["step"].tolist() == [1, 2, 3, 4, 5, 6] and math.isfinite(train_loss["value"].sum())


def test_load_study_names_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_ids"):
        study.load_study(tmp_path, ["d8-plain-s0-0000000000"])
