import json
import re
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from analysis.store import run_dirs
from conftest import TINY_STUDY

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "depth_study.ipynb"
TINY = {**TINY_STUDY, "depth": 8, "steps": 6, "val_every": 3, "seeds": [0, 1]}
FIGURES = 6


def _execute(tmp_path, name, **parameters):
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    return nbformat.read(out, as_version=4)


def _outputs(nb, output_type=None):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
            if output_type is None or o.output_type == output_type]


def _records(runs_dir):
    return {path.name: json.loads((path / "config.json").read_text()) for path in run_dirs(runs_dir)}


def test_tiny_study_renders_figures_and_findings_then_reuses_its_runs(tmp_path):
    runs = tmp_path / "runs"
    nb = _execute(tmp_path, "first", **TINY, runs_dir=str(runs), findings_path=str(tmp_path / "findings.json"))
    pngs = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    assert len(pngs) == FIGURES
    assert not _outputs(nb, "error")
    findings = [o.data["text/markdown"] for o in _outputs(nb, "execute_result") if "text/markdown" in o.data]
    assert len(findings) == 1
    assert "The residual network (2 seeds) ended with a train loss of" in findings[0]
    assert re.search(r"At the first recorded step \(initialisation\), the weight-gradient norm of the plain "
                     r"network's convolutions (grows towards the input|shrinks towards the input|is about flat)",
                     findings[0])
    stored = json.loads((tmp_path / "findings.json").read_text())
    assert [group["settings"]["variant"] for group in stored["groups"]] == ["plain", "residual"]
    assert all(group["n_seeds"] == 2 and group["seeds"] == [0, 1] for group in stored["groups"])
    assert stored["sentences"][0] in findings[0]
    tables = [o.data["text/html"] for o in _outputs(nb, "execute_result") if "text/html" in o.data]
    assert any("MACs per image" in table for table in tables)

    records = _records(runs)
    assert len(records) == 4 and {r["status"] for r in records.values()} == {"complete"}
    assert sorted((r["config"]["residual"], r["config"]["seed"]) for r in records.values()) == \
        [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert {r["config"]["residual"] for r in records.values()} == {True, False}
    for run_id in records:
        assert (runs / run_id / "metrics.parquet").is_file() and (runs / run_id / "stats.parquet").is_dir()

    again = _execute(tmp_path, "second", **TINY, runs_dir=str(runs))
    assert _records(runs) == records  # start times included: nothing was retrained
    text = "".join(o.text for o in _outputs(again, "stream"))
    assert text.count("reused finished run") == 4
    assert len([o for o in _outputs(again) if "image/png" in o.get("data", {})]) == FIGURES


@pytest.mark.parametrize("parameters, message", [
    ({"depth": 51}, "ParameterError: depth: 51 is not supported; valid depths: 18, 34, 50, 101, 152, or 6n+2"),
    ({"optimizer": "sgdd"}, "ParameterError: optimizer: 'sgdd' is not one of 'sgd', 'adam', 'adamw'"),
    ({"lr": -1}, "ParameterError: lr: must be > 0, got -1"),
    ({"dataset": "nope"}, "ParameterError: dataset: 'nope' is not one of 'synthetic', 'digits'"),
    ({"dpeth": 50}, "ParameterError: dpeth: unknown parameter (did you mean 'depth'?); known parameters: depth, "),
])
def test_bad_parameters_stop_the_notebook_with_one_line(tmp_path, parameters, message):
    runs = tmp_path / "runs"
    with pytest.raises(PapermillExecutionError) as caught:
        _execute(tmp_path, "bad", **{**TINY, "runs_dir": str(runs), **parameters})
    error = caught.value
    assert error.ename == "ParameterError"
    assert len(error.traceback) == 1 and error.traceback[0].startswith(message)
    assert "\n" not in error.traceback[0]
    assert _records(runs) == {}  # validation ran before any training
