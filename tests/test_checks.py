import numpy as np
import pytest

from analysis import checks
from analysis.checks import CheckError
from analysis.config import ConfigError
from analysis.parameters import ParameterError


def message(check, *args, **kwargs):
    with pytest.raises(CheckError) as caught:
        check(*args, **kwargs)
    assert str(caught.value) == f"{caught.value.field}: {caught.value.reason}"
    return str(caught.value)


def test_shown_cuts_long_values():
    assert checks.shown("abc") == "'abc'"
    assert checks.shown("x" * 200) == "'" + "x" * 79 + "... (202 characters)"


def test_integer_accepts_integers_within_bounds_and_returns_ints():
    assert checks.integer("n", 3, minimum=1) == 3
    assert type(checks.integer("n", np.int64(3), minimum=1)) is int
    assert checks.integer("n", None, minimum=1, optional=True) is None
    assert checks.integer("n", 5, minimum=0, maximum=5) == 5


@pytest.mark.parametrize("value, kwargs, expected", [
    ("x", {"minimum": 1}, "n: must be an integer >= 1, got 'x'"),
    (True, {"minimum": 1}, "n: must be an integer >= 1, got True"),
    (2.0, {}, "n: must be an integer, got 2.0"),
    (0, {"minimum": 1, "optional": True}, "n: must be an integer >= 1 or None, got 0"),
    (6, {"minimum": 0, "maximum": 5}, "n: must be an integer in 0..5, got 6"),
    (None, {"maximum": 5}, "n: must be an integer <= 5, got None"),
])
def test_integer_messages(value, kwargs, expected):
    assert message(checks.integer, "n", value, **kwargs) == expected


def test_number_checks_type_then_bounds():
    assert checks.number("lr", 1, above=0) == 1.0 and type(checks.number("lr", 1, above=0)) is float
    assert message(checks.number, "lr", "0.1", above=0) == "lr: must be a finite number, got '0.1'"
    assert message(checks.number, "lr", float("nan")) == "lr: must be a finite number, got nan"
    assert message(checks.number, "lr", False) == "lr: must be a finite number, got False"
    assert message(checks.number, "lr", -1, above=0) == "lr: must be > 0, got -1"
    assert message(checks.number, "m", 1.0, minimum=0.0, below=1.0) == "m: must be >= 0.0 and < 1.0, got 1.0"


def test_boolean_choice_and_path():
    assert checks.boolean("b", False) is False and checks.boolean("b", None, optional=True) is None
    assert message(checks.boolean, "b", 1) == "b: must be True or False, got 1"
    assert message(checks.boolean, "b", "yes", optional=True) == "b: must be True, False or None, got 'yes'"
    assert checks.choice("opt", "adam", ("sgd", "adam")) == "adam"
    assert message(checks.choice, "opt", "rmsprop", ("sgd", "adam", "adamw")) == \
        "opt: 'rmsprop' is not one of 'sgd', 'adam', 'adamw'"
    assert message(checks.choice, "stem", "vit", ("cifar",), optional=True) == "stem: 'vit' is not one of 'cifar', or None"
    assert checks.path("p", "runs") == "runs" and checks.path("p", None, optional=True) is None
    assert message(checks.path, "p", "", kind="folder path") == "p: must be a folder path string, got ''"
    assert message(checks.path, "p", 3, kind="file path", optional=True) == "p: must be a file path string or None, got 3"


@pytest.mark.parametrize("value, expected", [
    (3, (3,)), ([0, 1, 2], (0, 1, 2)), ((4,), (4,)), ("1,2", (1, 2)), ("[4, 5]", (4, 5)), (" (7) ", (7,)),
])
def test_integers_take_one_a_list_or_papermills_text(value, expected):
    assert checks.integers("seeds", value, minimum=0, distinct=True) == expected


@pytest.mark.parametrize("value", [[], None, "", [1, 1], "a,b", [0.5], True, [-1], [True]])
def test_integers_reject(value):
    assert message(checks.integers, "seeds", value, minimum=0, distinct=True).startswith(
        "seeds: must be an integer or a non-empty list of distinct integers >= 0, got ")


def test_integers_may_be_empty_and_floats_and_choices_read_lists():
    assert checks.integers("milestones", None, empty=True) == () == checks.integers("milestones", "[]", empty=True)
    assert message(checks.integers, "m", "a", empty=True) == "m: must be an integer or a list of integers, got 'a'"
    assert checks.floats("betas", "0.8, 0.99") == (0.8, 0.99) and checks.floats("betas", [0, 1]) == (0.0, 1.0)
    assert message(checks.floats, "betas", ["x"]) == "betas: must be a number or a list of numbers, got ['x']"
    assert checks.choices("norms", "batch, none", ("batch", "none")) == ("batch", "none")
    assert checks.choices("norms", ["none", "none"], ("batch", "none")) == ("none",)
    assert checks.choices("norms", "['batch']", ("batch", "none")) == ("batch",)
    assert message(checks.choices, "norms", [], ("batch", "none")) == \
        "norms: must be a non-empty list of values from 'batch', 'none', got []"


def test_raising_converts_to_the_boundarys_error():
    with pytest.raises(ConfigError) as caught, checks.raising(ConfigError):
        checks.integer("steps", 0, minimum=1)
    assert type(caught.value) is ConfigError and caught.value.field == "steps"
    assert str(caught.value) == "steps: must be an integer >= 1, got 0"
    with pytest.raises(ParameterError) as caught, checks.raising(ParameterError):
        raise ConfigError("seed", "must be an integer >= 0, got -1")
    assert caught.value.name == "seed" and str(caught.value) == "seed: must be an integer >= 0, got -1"
    original = ParameterError("depth", "too deep")
    with pytest.raises(ParameterError) as caught, checks.raising(ParameterError):
        raise original
    assert caught.value is original
    with pytest.raises(KeyError), checks.raising(ParameterError):
        raise KeyError("not a check")
