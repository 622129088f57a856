"""Optional dependencies: the extras of analysis.extras are pyproject.toml's, and a missing one is named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from analysis import extras
from analysis.extras import MissingExtra, install_command, optional, require, require_extra

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_extras_are_those_of_pyproject():
    assert extras.DISTRIBUTION == PROJECT["name"]
    declared = {name: sorted(canonicalize_name(Requirement(r).name) for r in reqs)
                for name, reqs in PROJECT["optional-dependencies"].items() if name not in ("all", "test")}
    assert {name: sorted(modules.values()) for name, modules in extras.EXTRAS.items()} == declared


def test_a_missing_module_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert optional("no_such_module_here") is None
    assert optional("json.no_such_submodule") is None
    assert optional("json").dumps([]) == "[]"
    with pytest.raises(MissingExtra, match=r"^the thing needs the 'data' extra, which is not installed: "
                                           r"pip install 'trainability-lab\[data\]'$") as caught:
        require("no_such_module_here.sub", "data", feature="the thing")
    assert isinstance(caught.value, ImportError) and caught.value.name == "no_such_module_here.sub"


def test_a_broken_installed_package_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "half_installed.py").write_text("import its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        require("half_installed", "report")
    assert not isinstance(caught.value, MissingExtra) and caught.value.name == "its_missing_dependency"


def test_require_extra_lists_what_is_missing(monkeypatch):
    require_extra("report", feature="the report")
    monkeypatch.setitem(extras.EXTRAS, "report", {"json": "json", "no_such_module_here": "nothing"})
    with pytest.raises(MissingExtra, match=r"the report needs the 'report' extra \(no_such_module_here missing\): "
                                           r"pip install 'trainability-lab\[report\]'"):
        require_extra("report", feature="the report")


def test_an_unknown_extra_is_an_error():
    with pytest.raises(ValueError, match="extra must be one of report, data, cluster, integrations, bench; got 'reports'"):
        install_command("reports")
