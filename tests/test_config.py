import math

import numpy as np
import pytest

from analysis.checks import CheckError
from analysis.config import ConfigError, TrainConfig, config_fields, settings


def test_defaults_validate_and_round_trip():
    config = TrainConfig().validate()
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    assert again.run_id() == config.run_id()


def test_run_id_depends_on_config_and_seed_but_not_threads():
    base = TrainConfig(depth=20)
    assert base.run_id().startswith("d20-residual-s0-")
    assert TrainConfig(depth=20, residual=False).run_id().startswith("d20-plain-s0-")
    assert TrainConfig(depth=20, seed=1).run_id() != base.run_id()
    assert TrainConfig(depth=20, lr=0.05).run_id() != base.run_id()
    assert TrainConfig(depth=20, threads=1).run_id() == base.run_id()
    assert TrainConfig(depth=20).run_id() == base.run_id()


def test_lists_from_json_are_canonical():
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), "milestones": [10, 20], "schedule": "step"})
    assert config.milestones == (10, 20)
    assert config == TrainConfig(milestones=(10, 20), schedule="step")


@pytest.mark.parametrize("field, value, words", [
    ("depth", 19, "valid depths"),
    ("depth", 51, "valid depths"),
    ("depth", "20", "integer"),
    ("depth", True, "integer"),
    ("residual", "yes", "True or False"),
    ("shortcut", "C", "'A', 'B'"),
    ("norm", "layer", "'batch', 'none'"),
    ("width", 0, ">= 1"),
    ("stem", "vit", "'cifar', 'imagenet'"),
    ("init", "xavier", "'kaiming', 'fixup', 'skipinit'"),
    ("init", None, "'kaiming', 'fixup', 'skipinit'"),
    ("dataset", "nope", "synthetic"),
    ("image_size", 4, ">= 8"),
    ("batch_size", 0, ">= 1"),
    ("steps", -1, ">= 1"),
    ("optimizer", "sgdd", "'sgd', 'adam', 'adamw'"),
    ("lr", -1.0, "> 0"),
    ("lr", 0, "> 0"),
    ("lr", math.nan, "finite"),
    ("lr", math.inf, "finite"),
    ("lr", "0.1", "finite"),
    ("momentum", 1.0, "< 1.0"),
    ("weight_decay", -0.1, ">= 0.0"),
    ("betas", (0.9,), "two numbers"),
    ("betas", (0.9, 1.5), "two numbers"),
    ("schedule", "linear", "'constant', 'step', 'cosine'"),
    ("gamma", 0.0, "> 0"),
    ("warmup_steps", -1, ">= 0"),
    ("seed", -1, ">= 0"),
    ("device", "tpu", "'auto', 'cpu', 'cuda', 'mps'"),
    ("val_every", 0, ">= 1"),
    ("val_batches", 0, ">= 1"),
    ("stats_every", -1, ">= 0"),
    ("threads", 0, ">= 1"),
])
def test_every_invalid_value_names_its_field(field, value, words):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value}).validate()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert words in str(info.value)


@pytest.mark.parametrize("changes, field", [
    ({"schedule": "step"}, "milestones"),
    ({"schedule": "step", "milestones": (50, 20)}, "milestones"),
    ({"milestones": (500,), "steps": 100}, "milestones"),
    ({"warmup_steps": 200, "steps": 200}, "warmup_steps"),
    ({"nesterov": True, "optimizer": "adam"}, "nesterov"),
    ({"zero_init_residual": True, "residual": False}, "zero_init_residual"),
    ({"zero_init_residual": True, "norm": "none"}, "zero_init_residual"),
    ({"init": "fixup"}, "init"),
    ({"init": "fixup", "norm": "none", "residual": False}, "init"),
    ({"init": "skipinit", "residual": False}, "init"),
    ({"init": "skipinit", "zero_init_residual": True}, "zero_init_residual"),
    ({"init": "fixup", "norm": "none", "zero_init_residual": True}, "zero_init_residual"),
    ({"min_lr": 1.0, "lr": 0.1}, "min_lr"),
])
def test_inconsistent_combinations_are_rejected(changes, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**changes).validate()
    assert info.value.field == field


def test_unknown_field_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"dpeth": 50})
    assert info.value.field == "dpeth"
    assert "depth" in str(info.value)
    assert set(config_fields()) >= {"depth", "residual", "optimizer", "schedule", "stats_every"}


def test_init_defaults_to_kaiming_and_allows_fixup_and_skipinit():
    assert TrainConfig().init == "kaiming"
    assert "init" in config_fields()
    fixup = TrainConfig(init="fixup", norm="none").validate()
    skipinit = TrainConfig(init="skipinit").validate()
    TrainConfig(init="skipinit", norm="none").validate()
    ids = {TrainConfig(norm="none").run_id(), fixup.run_id(), skipinit.run_id(), TrainConfig().run_id()}
    assert len(ids) == 4
    assert TrainConfig.from_dict(fixup.to_dict()) == fixup
    with pytest.raises(ConfigError, match="norm='none'"):
        TrainConfig(init="fixup").validate()
    with pytest.raises(ConfigError, match="residual=True"):
        TrainConfig(init="skipinit", residual=False).validate()


def test_every_field_declares_its_default_and_one_line_help():
    fields = settings()
    assert list(fields) == list(config_fields())
    assert fields["lr"] == (0.1, "peak learning rate", None)
    assert fields["betas"] == ([0.9, 0.999], "Adam/AdamW moment decay rates", float)
    assert fields["milestones"].default == [] and fields["milestones"].items is int
    assert {name: field.default for name, field in fields.items()} == TrainConfig().to_dict()
    for name, field in fields.items():
        assert field.help and "\n" not in field.help and field.help == field.help.strip(), name


def test_numpy_numbers_are_kept_as_python_numbers():
    config = TrainConfig(depth=np.int64(20), lr=np.float32(0.5), steps=np.int32(100)).validate()
    assert (type(config.depth), type(config.lr), type(config.steps)) == (int, float, int)
    assert config.run_id() == TrainConfig(depth=20, lr=0.5, steps=100).run_id()


def test_errors_are_check_errors_with_the_field():
    with pytest.raises(CheckError) as info:
        TrainConfig(optimizer="rmsprop").validate()
    assert type(info.value) is ConfigError
    assert (info.value.field, info.value.reason) == ("optimizer", "'rmsprop' is not one of 'sgd', 'adam', 'adamw'")
    assert str(info.value) == "optimizer: 'rmsprop' is not one of 'sgd', 'adam', 'adamw'"
