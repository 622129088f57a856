"""Notebook parameters, read and checked one way for every study notebook.

A study module lists its parameters as ``PARAMETERS`` (name -> (default,
one-line description)); :func:`read_parameters` takes the notebook's
``globals()`` over those defaults, rejecting unknown names, and every check
raises :class:`ParameterError`, whose one-line message names the parameter.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

from analysis.checks import shown
Parameters = Mapping[str, tuple[Any, str]]

# Names IPython defines in every kernel namespace; never parameters.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
# Types papermill can inject; globals of other types are notebook state, not parameters.
_LITERAL_TYPES = (type(None), bool, int, float, str, list, tuple, dict)


class ParameterError(ValueError):
    """A bad notebook parameter; the one-line message names it and the allowed values.

    IPython shows it as that one line without a traceback (as ``%xmode Minimal``
    would), so a bad ``-p`` value stops a papermill run with a readable error.
    """

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"{name}: {message}")

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def defaults(parameters: Parameters) -> dict[str, Any]:
    """Name -> default of every parameter, in order."""
    return {name: default for name, (default, _) in parameters.items()}


def read_parameters(namespace: Mapping[str, Any], parameters: Parameters) -> dict[str, Any]:
    """The notebook's parameter values: ``namespace`` (its ``globals()``) over the defaults.

    Every public global that papermill could have injected (None, bool,
    number, str, list, tuple, dict) must be one of ``parameters``, so a typo
    such as ``dpeth`` is an error rather than a silently ignored setting;
    modules, functions, IPython's own names and other objects are skipped.
    """
    values = defaults(parameters)
    for name, value in namespace.items():
        if name.startswith("_") or name in _IPYTHON_NAMES or not isinstance(value, _LITERAL_TYPES):
            continue
        if name not in parameters:
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f" (did you mean {shown(close[0])}?)" if close else ""
            raise ParameterError(name, f"unknown parameter{hint}; known parameters: {', '.join(parameters)}")
        values[name] = value
    return values


def optional_path(name: str, value: Any) -> str | None:
    """A non-empty path string or None (e.g. ``findings_path``)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ParameterError(name, f"must be a file path string or None, got {shown(value)}")
    return value


def folder_path(name: str, value: Any) -> str:
    """A non-empty folder path string (e.g. ``runs_dir``)."""
    if not isinstance(value, str) or not value:
        raise ParameterError(name, f"must be a folder path string, got {shown(value)}")
    return value
