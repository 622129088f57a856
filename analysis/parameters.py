"""Notebook parameters, derived from one source and read and checked one way for every study notebook.

A study module lists its parameters as ``PARAMETERS`` (name -> (default,
one-line description)). Training settings take their description from their
:class:`~analysis.config.TrainConfig` field (:func:`training_parameters`) and
their default from TrainConfig's, or from the study's own where it differs,
with the reason beside it (:func:`with_defaults`). :func:`read_parameters` takes
the notebook's ``globals()`` over those defaults, rejecting unknown names;
every check raises :class:`ParameterError`, whose one-line message names the
parameter. Each notebook's parameters cell is written from ``PARAMETERS``
(:func:`parameters_cell`; ``python -m analysis.parameters`` rewrites them all).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Mapping

from analysis import checks
from analysis.checks import shown
from analysis.config import TrainConfig, settings

Parameters = Mapping[str, tuple[Any, str]]
"""name -> (default, one-line description)."""

Differences = Mapping[str, tuple[Any, str]]
"""TrainConfig field -> (a study's own default, why it differs from TrainConfig's)."""

# Names IPython defines in every kernel namespace; never parameters.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
# Types papermill can inject; globals of other types are notebook state, not parameters.
_LITERAL_TYPES = (type(None), bool, int, float, str, list, tuple, dict)


class ParameterError(checks.CheckError):
    """A bad notebook parameter; the one-line message names it (``name``) and the allowed values.

    IPython shows it as that one line without a traceback (as ``%xmode Minimal``
    would), so a bad ``-p`` value stops a papermill run with a readable error.
    """

    @property
    def name(self) -> str:
        return self.field

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def defaults(parameters: Parameters) -> dict[str, Any]:
    """Name -> default of every parameter, in order."""
    return {name: default for name, (default, _) in parameters.items()}


def with_defaults(base: TrainConfig, differences: Differences) -> TrainConfig:
    """``base`` with a study's own defaults (name -> (default, why it differs))."""
    return base.replace(**{name: default for name, (default, _) in differences.items()})


def training_parameters(config: TrainConfig, names: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """Parameters for TrainConfig fields: name -> (``config``'s value, JSON-ready; the field's help)."""
    values, fields = config.to_dict(), settings()
    return {name: (values[name], fields[name].help) for name in names}


def training_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields among notebook ``values``, as TrainConfig takes them.

    A whole number for a float setting becomes a float (``lr=1`` and ``lr=1.0``
    are one run), and a list setting may come as the text papermill's ``-p``
    gives ('100, 200'); a list that is not one raises CheckError naming it.
    """
    fields = settings()
    result = {}
    for name, value in values.items():
        if name not in fields:
            continue
        if fields[name].items is int:
            value = checks.integers(name, value, empty=True)
        elif fields[name].items is float:
            value = checks.floats(name, value)
        elif isinstance(fields[name].default, float) and checks.is_integer(value):
            value = float(value)
        result[name] = value
    return result


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


def parameters_cell(parameters: Parameters) -> str:
    """A notebook's parameters cell: ``name = default  # description`` per parameter, the comments aligned."""
    lines = [f"{name} = {default!r}" for name, (default, _) in parameters.items()]
    width = max(map(len, lines))
    return "\n".join(f"{line.ljust(width)}  # {description}"
                     for line, (_, description) in zip(lines, parameters.values()))


def write_parameters_cell(notebook: str | Path, parameters: Parameters) -> bool:
    """Rewrite the notebook's cell tagged ``parameters`` from ``parameters``; True when it changed."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cell = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
    source = parameters_cell(parameters)
    if cell.source == source:
        return False
    cell.source = source
    nbformat.write(nb, notebook)
    return True


def main() -> None:
    """Rewrite every study notebook's parameters cell from its module's ``PARAMETERS``."""
    from analysis.studies import KINDS

    for kind in KINDS.values():
        changed = write_parameters_cell(kind.notebook, kind.parameters)
        print(f"{kind.notebook}: {'rewritten' if changed else 'up to date'}")


if __name__ == "__main__":
    main()
