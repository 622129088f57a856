"""Checks of single values, each failing with one message format: the field, what is allowed, the value.

Every message reads ``"<field>: must be <what is allowed>, got <value>"`` (or
``"<field>: <value> is not one of <choices>"``) and is raised as
:class:`CheckError`, a ValueError carrying the field. Each boundary checks its
input once (``TrainConfig.validate``, ``build_model``, ``load_data``, the study
notebooks' parameters) and raises its own subclass
(``ConfigError``, ``ParameterError``), converting with :func:`raising`; the
layers behind a boundary trust what it passed on.

A value pasted by mistake (a whole file, a 100 kB string) is shown by its start
and its length (:func:`shown`), so a message stays one readable line.
"""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import yaml

SHOWN_CHARACTERS = 80


class CheckError(ValueError):
    """A value its field does not allow; ``field`` names it and ``reason`` is the message after ``"<field>: "``."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@contextmanager
def raising(error: type[CheckError]) -> Iterator[None]:
    """Inside the ``with``, raise every CheckError as ``error``, with the same field and message.

    How a boundary turns the checks' errors (and those of the boundaries it
    calls, e.g. a study's ConfigError) into its own.
    """
    try:
        yield
    except CheckError as exc:
        if type(exc) is error:
            raise
        raise error(exc.field, exc.reason) from None


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)``, or its first ``limit`` characters and the full length when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def is_integer(value: Any) -> bool:
    """An integer (Python's or NumPy's), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (integer or float, Python's or NumPy's), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as an int; an integer within the bounds (or None when ``optional``), else CheckError."""
    if optional and value is None:
        return None
    if (not is_integer(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        allowed = _integer_kind(minimum, maximum) + (" or None" if optional else "")
        raise CheckError(field, f"must be {allowed}, got {shown(value)}")
    return int(value)


def number(field: str, value: Any, *, minimum: float | None = None, above: float | None = None,
           below: float | None = None) -> float:
    """``value`` as a float; a finite number ``>= minimum``, ``> above`` and ``< below``, else CheckError."""
    if not is_number(value) or not math.isfinite(value):
        raise CheckError(field, f"must be a finite number, got {shown(value)}")
    bounds = {}
    if minimum is not None:
        bounds[f">= {minimum}"] = value >= minimum
    if above is not None:
        bounds[f"> {above}"] = value > above
    if below is not None:
        bounds[f"< {below}"] = value < below
    if not all(bounds.values()):
        raise CheckError(field, f"must be {' and '.join(bounds)}, got {shown(value)}")
    return float(value)


def boolean(field: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value`` when it is True or False (or None when ``optional``), else CheckError."""
    if not isinstance(value, bool) and not (optional and value is None):
        raise CheckError(field, f"must be {'True, False or None' if optional else 'True or False'}, got {shown(value)}")
    return value


def choice(field: str, value: Any, allowed: Sequence[Any], *, optional: bool = False) -> Any:
    """``value`` when it is one of ``allowed`` (or None when ``optional``), else CheckError listing them."""
    if optional and value is None:
        return None
    if value not in allowed:
        raise CheckError(field, f"{shown(value)} is not one of {_listed(allowed)}" + (", or None" if optional else ""))
    return value


def path(field: str, value: Any, *, kind: str = "path", optional: bool = False) -> str | None:
    """``value`` when it is a non-empty string (or None when ``optional``), else CheckError; ``kind``
    words what it names ('file path', 'folder path')."""
    if not (isinstance(value, str) and value) and not (optional and value is None):
        raise CheckError(field, f"must be a {kind} string{' or None' if optional else ''}, got {shown(value)}")
    return value


def integers(field: str, value: Any, *, minimum: int | None = None, distinct: bool = False,
             empty: bool = False) -> tuple[int, ...]:
    """One integer or a list of them (also as the text papermill's ``-p`` gives: '1,2' or '[1, 2]'), as a tuple.

    Each at least ``minimum``; ``distinct`` rejects repeats; ``empty`` allows none (None or []).
    """
    items = _items(value)
    if (not (items or empty) or not all(is_integer(v) and (minimum is None or v >= minimum) for v in items)
            or (distinct and len(set(items)) != len(items))):
        bound = "" if minimum is None else f" >= {minimum}"
        kind = f"{'a' if empty else 'a non-empty'} list of {'distinct ' if distinct else ''}integers{bound}"
        raise CheckError(field, f"must be an integer or {kind}, got {shown(value)}")
    return tuple(int(v) for v in items)


def floats(field: str, value: Any) -> tuple[float, ...]:
    """One number or a list of them (also as text, '0.9, 0.999'), as a tuple of floats."""
    items = _items(value)
    if not all(is_number(v) for v in items):
        raise CheckError(field, f"must be a number or a list of numbers, got {shown(value)}")
    return tuple(float(v) for v in items)


def choices(field: str, value: Any, allowed: Sequence[Any]) -> tuple[Any, ...]:
    """One of ``allowed`` or a non-empty list of them (also as text, 'a, b'), repeats dropped, as a tuple."""
    items = _items(value)
    if not items or any(v not in allowed for v in items):
        raise CheckError(field, f"must be a non-empty list of values from {_listed(allowed)}, got {shown(value)}")
    return tuple(dict.fromkeys(items))


def _integer_kind(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in {minimum}..{maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer" if maximum is None else f"an integer <= {maximum}"


def _listed(allowed: Sequence[Any]) -> str:
    return ", ".join(repr(a) for a in allowed)


def _items(value: Any) -> list[Any]:
    """A list as given, a lone value as a list of one, None as no items, and text as papermill's ``-p``
    passes a list: '1, 2', '[1, 2]' or 'a, b', read by :func:`yaml_items` (text it cannot read stays one item)."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[(" and text[-1:] in "])":
            text = text[1:-1]
        try:
            return yaml_items(text) if text.strip() else []
        except ValueError:
            return [value]
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def setting(item: str, expected: str) -> tuple[str, list[Any]]:
    """``'lr=0.1,0.01'`` -> ``('lr', [0.1, 0.01])``: one ``--set KEY=VALUE`` item, its values read by
    :func:`yaml_items`; a ValueError says what was ``expected`` or names the key."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ValueError(f"--set: expected {expected}, got {shown(item)}")
    try:
        return key, yaml_items(text)
    except ValueError as exc:
        raise ValueError(f"--set {key}: {exc}") from None


EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml_items(text: str) -> list[Any]:
    """``'0.1,0.01'`` -> ``[0.1, 0.01]``: the text read as the items of one YAML flow sequence.

    Commas inside ``[]``, ``{}`` or quotes stay inside their value (``[10, 20],[30]``
    is two lists). Values read as Python would: ``1e-3`` (a string to YAML 1.1) is a
    float and ``None`` is None. Anything YAML cannot read (an unclosed quote or
    bracket) raises a ValueError instead of dropping values.
    """
    try:
        values = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ValueError(f"{shown(text)} is not a comma-separated list of YAML values ({problem})") from None
    if not isinstance(values, list) or not values:
        raise ValueError(f"{shown(text)} is not a comma-separated list of YAML values")
    return [_as_python(value) for value in values]


def _as_python(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_python(item) for item in value]
    if value == "None":
        return None
    if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value):
        return float(value)
    return value
