"""Every study notebook is committed clean, with one parameters cell that papermill reads as its module lists it."""
import ast

import nbformat
import papermill
import pytest

from analysis.parameters import defaults, parameters_cell
from analysis.studies import KINDS


@pytest.mark.parametrize("name", list(KINDS))
def test_committed_notebook_is_clean_with_the_modules_parameters(name):
    kind = KINDS[name]
    nb = nbformat.read(kind.notebook, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    assert all("  # " in line for line in tagged[0].source.splitlines())  # a comment per parameter
    assigned = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(tagged[0].source).body}
    assert list(assigned) == list(kind.parameters) and assigned == defaults(kind.parameters)
    # Written from the module's parameters (python -m analysis.parameters rewrites it).
    assert tagged[0].source == parameters_cell(kind.parameters)
    assert f"{kind.module_name.removeprefix('analysis.')}.validate_parameters(globals())" in code[1].source
    # papermill sees every parameter with its default and help (a comment holding '=' would hide it).
    found = papermill.inspect_notebook(str(kind.notebook))
    assert list(found) == list(kind.parameters)
    for parameter, (default, description) in kind.parameters.items():
        assert ast.literal_eval(found[parameter]["default"]) == default, parameter
        assert found[parameter]["help"] == description, parameter
