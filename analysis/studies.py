"""The kinds of study: each a parameterized notebook and the module that checks its parameters.

A sweep executes one kind's notebook once per point; the report compiles
every executed notebook it finds. Every kind's module defines ``PARAMETERS``
(name -> (default, one-line description)) and ``validate_parameters(namespace)``,
which returns checked parameters with ``to_dict()``; kinds that train define
``run_ids_for(params)`` too.

- ``depth``: residual against plain at one depth (``notebooks/depth_study.ipynb``, :mod:`analysis.study`);
- ``init``: gradients and the residual stream at initialisation over depths (:mod:`analysis.init_study`);
- ``lesion``: validation error after deleting single blocks of trained networks (:mod:`analysis.lesion`);
- ``costs``: parameters and multiply-accumulates of blocks and the ImageNet family (:mod:`analysis.costs`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from analysis.checks import shown
NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"


@dataclass(frozen=True)
class StudyKind:
    """One kind of study: its notebook, its module, and which grid axes (``depth``, ``variants``) it takes."""

    name: str
    notebook_name: str
    module_name: str
    axes: tuple[str, ...]

    @property
    def notebook(self) -> Path:
        return NOTEBOOKS_DIR / self.notebook_name

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)

    @property
    def parameters(self) -> dict[str, tuple[Any, str]]:
        return self.module.PARAMETERS

    def validate(self, namespace: Mapping[str, Any]) -> Any:
        """The module's checked parameters (raises a ValueError naming the parameter)."""
        return self.module.validate_parameters(namespace)

    def run_ids(self, parameters: Mapping[str, Any]) -> list[str]:
        """The run folders an execution with these parameters writes; none when the kind trains nothing
        or the parameters are rejected."""
        run_ids_for = getattr(self.module, "run_ids_for", None)
        if run_ids_for is None:
            return []
        try:
            return list(run_ids_for(self.validate(parameters)))
        except ValueError:
            return []


KINDS: dict[str, StudyKind] = {
    "depth": StudyKind("depth", "depth_study.ipynb", "analysis.study", ("depth", "variants")),
    "init": StudyKind("init", "init_study.ipynb", "analysis.init_study", ()),
    "lesion": StudyKind("lesion", "lesion_study.ipynb", "analysis.lesion", ("depth",)),
    "costs": StudyKind("costs", "architecture_costs.ipynb", "analysis.costs", ()),
}


def kind(name: str) -> StudyKind:
    """The study kind called ``name`` (a ValueError lists the kinds otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"study: {shown(name)} is not one of {', '.join(map(repr, KINDS))}") from None
