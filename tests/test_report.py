import argparse
import json
import shutil

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup

from analysis import report
from conftest import TINY
from analysis.frames import TRAIN_WINDOW
from analysis.config import TrainConfig
from analysis.train import Callback, train

FAILED_STUDY_ERROR = 'PapermillExecutionError: <script>alert("x")</script> & co'
FAILED_RUN_ERROR = "RuntimeError: out of <b>memory</b> & time"
CODE_MARKER = "validate_parameters"
FAILED_STUDY = "d14-plain-broken"


class FailAtStep(Callback):
    def on_step_end(self, run):
        if run.step == 2:
            raise RuntimeError("out of <b>memory</b> & time")


@pytest.fixture(scope="module")
def runs_dir(tiny_sweep, tmp_path_factory):
    """A copy of the shared sweep point (the depth-study notebook at depth 8, tiny), two more runs, one failed,
    one failed study."""
    root = tmp_path_factory.mktemp("runs") / "runs"
    shutil.copytree(tiny_sweep[0], root)
    train(TrainConfig(depth=14, residual=False, **TINY), root=root, progress=False)
    with pytest.raises(RuntimeError):
        train(TrainConfig(depth=14, residual=True, **TINY), root=root, progress=False, callbacks=[FailAtStep()])
    broken = root / "studies" / FAILED_STUDY
    broken.mkdir()
    (broken / "study.json").write_text(json.dumps({
        "study_id": FAILED_STUDY, "parameters": {"depth": 14, "variants": "plain"}, "status": "failed",
        "error": FAILED_STUDY_ERROR, "run_ids": []}))
    return root


@pytest.fixture(scope="module")
def study(runs_dir):
    """The sweep point's study id and its executed notebook."""
    folder = next(path for path in (runs_dir / "studies").iterdir() if path.name != FAILED_STUDY)
    return folder.name, nbformat.read(folder / "depth_study.ipynb", as_version=4)


@pytest.fixture(scope="module")
def reports(runs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    assert report.build_reports(runs_dir, out) == out / "index.html"
    return out


def soup(path):
    return BeautifulSoup(path.read_text(), "html.parser")


def direct_final_numbers(run_path):
    """Final train loss/accuracy (mean of the last TRAIN_WINDOW steps) and last val accuracy, from the parquet."""
    metrics = pd.read_parquet(run_path / "metrics.parquet").sort_values("step")

    def values(split, metric):
        return metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]["value"]

    val_accuracy = values("val", "accuracy")
    return (values("train", "loss").iloc[-TRAIN_WINDOW:].mean(),
            values("train", "accuracy").iloc[-TRAIN_WINDOW:].mean(),
            val_accuracy.iloc[-1] if len(val_accuracy) else float("nan"))


def test_index_lists_every_run_with_its_numbers(runs_dir, reports):
    page = soup(reports / "index.html")
    header = [th.get_text() for th in page.find(id="run-" + next(runs_dir.glob("d8-*")).name)
              .find_parent("table").find_all("th")]
    run_paths = sorted(path.parent for path in runs_dir.glob("*/config.json"))
    assert len(run_paths) == 4
    for path in run_paths:
        record = json.loads((path / "config.json").read_text())
        cells = dict(zip(header, (td.get_text() for td in page.find(id=f"run-{record['run_id']}").find_all("td"))))
        loss, accuracy, val_accuracy = direct_final_numbers(path)
        assert cells["status"] == record["status"]
        assert cells["depth"] == str(record["config"]["depth"])
        assert cells["final train loss"] == f"{loss:.4f}"
        assert cells["final train accuracy"] == f"{accuracy:.4f}"
        assert cells["final val accuracy"] == (f"{val_accuracy:.4f}" if record["status"] == "complete" else "nan")
        assert cells["error"] == (record["error"] or "")
    failed = page.find(id=lambda value: value and value.startswith("run-d14-residual"))
    assert "bad" in failed["class"] and failed.find("pre").get_text() == FAILED_RUN_ERROR
    assert "out of &lt;b&gt;memory&lt;/b&gt; &amp; time" in (reports / "index.html").read_text()


def test_index_links_summary_and_studies_and_shows_failed_study(reports, study):
    study_id, _ = study
    text = (reports / "index.html").read_text()
    page = BeautifulSoup(text, "html.parser")
    links = {a["href"] for a in page.find_all("a")}
    assert {"summary.html", f"studies/{study_id}.html"} <= links
    assert all((reports / href).is_file() for href in links)
    row = page.find(id=f"study-{study_id}")
    assert row.find("a")["href"] == f"studies/{study_id}.html" and "bad" not in row.get("class", [])
    assert [td.get_text() for td in row.find_all("td")][1:5] == ["depth", "complete", "8", "both"]
    for variant in ("residual", "plain"):
        run = page.find(id=lambda value: value and value.startswith(f"run-d8-{variant}"))
        assert run.find("a", href=f"studies/{study_id}.html").get_text() == study_id
    failed = page.find(id=f"study-{FAILED_STUDY}")
    assert "bad" in failed["class"] and failed.find("a") is None
    assert failed.find("pre").get_text() == FAILED_STUDY_ERROR
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in text
    assert page.find("script") is None


def assert_self_contained(path, *, images):
    page = soup(path)
    assert not page.find_all("script", src=True) and not page.find_all("link", href=True)
    for tag in page.find_all(["img", "iframe", "embed", "source", "video", "audio", "object", "input"]):
        for attribute in ("src", "href", "data", "srcset"):
            assert not str(tag.get(attribute, "")).startswith(("http:", "https:", "//")), (path, tag.name)
    sources = [img["src"] for img in page.find_all("img")]
    assert len(sources) == images
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "cdnjs" not in path.read_text()


def png_count(notebook):
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_pages_are_self_contained_with_embedded_images(reports, study):
    study_id, notebook = study
    assert png_count(notebook) >= 5
    assert_self_contained(reports / "studies" / f"{study_id}.html", images=png_count(notebook))
    assert_self_contained(reports / "summary.html", images=4)
    assert_self_contained(reports / "index.html", images=0)
    assert sorted(path.name for path in reports.rglob("*") if path.is_file()) == \
        sorted(["index.html", "summary.html", "summary.ipynb", "summary.json", "answers.json", f"{study_id}.html"])


def test_index_opens_with_the_five_answers(runs_dir, reports):
    data = json.loads((reports / "answers.json").read_text())
    assert [question["id"] for question in data["questions"]] == ["q1", "q2", "q3", "q4", "q5"]
    page = soup(reports / "index.html")
    first_list = page.find("ol", class_="answers")
    assert first_list is not None and first_list.find_previous("h2").get_text().startswith("Five questions")
    for question in data["questions"]:
        item = page.find(id=question["id"])
        assert item.find(class_="question").get_text() == question["question"]
        assert item.find(class_="answer").get_text() == question["answer"]
        assert all((reports / link).is_file() for link in question["evidence"])
    # One depth and no init, lesion or costs study in this folder: the answers say what is missing.
    answers = {question["id"]: question["answer"] for question in data["questions"]}
    assert "Not measured: no complete depth study with two or more depths" in answers["q1"]
    assert answers["q3"] == "The architecture-cost study has not been run."


def test_summary_json_groups_every_configuration(runs_dir, reports):
    data = json.loads((reports / "summary.json").read_text())
    # The sweep point has the notebook's defaults, the other runs TrainConfig's: those settings vary too.
    assert {"depth", "variant", "lr"} <= set(data["varying"]) and "seed" not in data["varying"]
    records = [json.loads(path.read_text()) for path in runs_dir.glob("*/config.json")]
    readable = [record for record in records if record["status"] in ("complete", "diverged")]
    assert len(readable) == 3 and len(records) == 4  # the failed run is not summarised over seeds
    assert len(data["groups"]) == len(readable)  # one seed each: every run is its own configuration
    for group in data["groups"]:
        settings = group["settings"]
        assert "seed" not in settings and group["n_seeds"] == 1 and group["seeds"] == [0]
        [record] = [r for r in readable if r["config"]["depth"] == settings["depth"]
                    and r["config"]["residual"] == (settings["variant"] == "residual")]
        loss = group["metrics"]["final_train_loss"]
        assert loss["values"] == [pytest.approx(direct_final_numbers(runs_dir / record["run_id"])[0])]
        assert loss["sd"] is None and set(loss) == {"mean", "sd", "min", "max", "n", "values"}
        assert {"final_val_accuracy", "grad_ratio_init", "grad_ratio_final", "grad_growth_init",
                "diverged"} <= set(group["metrics"])
    index = soup(reports / "index.html")
    assert index.find("a", href="summary.json") is not None


def test_progress_bars_stay_out_of_the_html(reports, study):
    study_id, notebook = study
    training = [cell for cell in notebook.cells if "progress" in cell.metadata.get("tags", [])]
    assert len(training) == 1 and training[0].outputs  # the executed notebook keeps its log
    assert "reused finished run" in "".join(o.get("text", "") for o in training[0].outputs) or \
        "trained" in "".join(o.get("text", "") for o in training[0].outputs)
    page = (reports / "studies" / f"{study_id}.html").read_text()
    assert ": trained " not in page and "it/s" not in page


def test_summary_notebook_ran_over_every_run(runs_dir, reports):
    executed = nbformat.read(reports / "summary.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters == {"runs_dir": str(runs_dir.resolve())}
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert png_count(executed) == 4
    table = outputs[-1]["data"]["text/html"]
    assert all(path.parent.name in table for path in runs_dir.glob("*/config.json"))


def test_code_hidden_by_default_and_shown_with_show_code(runs_dir, reports, study, tmp_path):
    study_id, executed = study
    hidden = (reports / "studies" / f"{study_id}.html").read_text()
    assert CODE_MARKER not in hidden
    assert BeautifulSoup(hidden, "html.parser").find(class_="jp-InputArea-editor") is None
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    notebook = runs_dir / "studies" / study_id / "depth_study.ipynb"
    empty = tmp_path / "no-runs"
    empty.mkdir()
    assert report.run(parser.parse_args([str(empty), str(notebook), "--out", str(tmp_path / "out"),
                                         "--show-code"])) == 0
    shown = (tmp_path / "out" / "studies" / "depth_study.html").read_text()
    assert CODE_MARKER in shown
    code_cells = sum(cell.cell_type == "code" for cell in executed.cells)
    assert len(BeautifulSoup(shown, "html.parser").find_all(class_="jp-InputArea-editor")) == code_cells
    assert_self_contained(tmp_path / "out" / "studies" / "depth_study.html", images=png_count(executed))
    index = soup(tmp_path / "out" / "index.html")
    assert index.find(id="study-depth_study").find("a")["href"] == "studies/depth_study.html"
    assert "No summary: no runs found." in index.get_text()


def test_runs_folder_is_found_from_notebook_parameters(runs_dir, study, tiny_sweep, monkeypatch, tmp_path):
    notebook = runs_dir / "studies" / study[0] / "depth_study.ipynb"
    assert report.runs_dir_of([notebook]).resolve() == tiny_sweep[0].resolve()  # where the sweep executed it
    monkeypatch.chdir(tmp_path)
    assert report.runs_dir_of([tmp_path / "missing.ipynb"]) is None


def test_failed_and_unreadable_notebooks_are_reported(runs_dir, tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    failing = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    failing.cells[0].outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                                       traceback=[])]
    nbformat.write(failing, tmp_path / "failing.ipynb")
    index = report.build_reports(None, tmp_path / "out", studies=[broken, tmp_path / "failing.ipynb"])
    page = soup(index)
    unreadable = page.find(id="study-broken")
    assert unreadable.find(class_="status").get_text() == "unreadable" and unreadable.find("a") is None
    assert unreadable.find("pre").get_text().startswith("NotJSONError: Notebook does not appear to be JSON")
    failed = page.find(id="study-failing")
    assert failed.find(class_="status").get_text() == "failed"
    assert failed.find("pre").get_text() == "ZeroDivisionError: division by zero"
    assert failed.find("a")["href"] == "studies/failing.html"
    assert page.find(string=lambda text: text and "Runs (" in text) is None


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="runs_dir"):
        report.build_reports(None, tmp_path)
    with pytest.raises(ValueError, match="runs_dir: .* is not a folder"):
        report.build_reports(tmp_path / "missing", tmp_path)
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    with pytest.raises(ValueError, match="paths"):
        report.run(parser.parse_args([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]))
    (tmp_path / "file").touch()
    with pytest.raises(ValueError, match="out: .* exists and is not a folder"):
        report.build_reports(tmp_path, tmp_path / "file")


def test_format_number():
    assert report.format_number(0.123456) == "0.1235"
    assert report.format_number(float("nan")) == "nan" and report.format_number(float("inf")) == "inf"
    assert report.format_number(None) == "" and report.format_number(pd.NA) == ""


def test_summary_failure_is_shown_in_the_index(runs_dir, tmp_path):
    with pytest.warns(UserWarning, match="the summary notebook failed"):
        index = report.build_reports(runs_dir, tmp_path, kernel="no-such-kernel")
    page = soup(index)
    assert "<img" not in (tmp_path / "summary.html").read_text()
    assert "Summary failed:" in page.get_text() and "no-such-kernel" in page.find("pre", class_="error").get_text()
    assert not [path for path in tmp_path.rglob(".*")]


def test_unreadable_files_are_listed_and_the_rest_still_builds(tmp_path):
    """A zero-byte stats part, a config.json holding [] or null, a truncated metrics file and a study record
    holding [] each mark their run or study unreadable; the other run and the whole index still build."""
    root = tmp_path / "runs"
    configs = {name: TrainConfig(depth=depth, residual=residual, seed=seed, **TINY) for name, (depth, residual, seed) in
               {"good": (8, True, 0), "empty_part": (8, False, 0), "list_config": (8, True, 1),
                "null_config": (8, False, 1), "truncated_metrics": (14, False, 0)}.items()}
    paths = {name: train(config, root=root, progress=False).path for name, config in configs.items()}
    (paths["empty_part"] / "stats.parquet" / "part-00000000000000000000-zero-000000.parquet").write_bytes(b"")
    (paths["list_config"] / "config.json").write_text("[]")
    (paths["null_config"] / "config.json").write_text("null")
    metrics = (paths["truncated_metrics"] / "metrics.parquet").read_bytes()
    (paths["truncated_metrics"] / "metrics.parquet").write_bytes(metrics[: len(metrics) // 2])
    broken_study = root / "studies" / "d8-both-tampered"
    broken_study.mkdir(parents=True)
    (broken_study / "study.json").write_text("[]")

    index = report.build_reports(root, tmp_path / "out")
    page = soup(index)
    expected = {"empty_part": "stats.parquet: ArrowInvalid", "list_config": "ValueError: config.json does not hold",
                "null_config": "ValueError: config.json does not hold",
                "truncated_metrics": "metrics.parquet: ArrowInvalid"}
    for name, reason in expected.items():
        row = page.find(id=f"run-{paths[name].name}")
        assert row.find(class_="status").get_text() == "unreadable", name
        assert row.find("pre").get_text().startswith(reason), (name, row.find("pre").get_text())
        assert "bad" in row["class"]
    good = page.find(id=f"run-{paths['good'].name}")
    assert good.find(class_="status").get_text() == "complete" and good.find("pre") is None
    study = page.find(id="study-d8-both-tampered")
    assert study.find(class_="status").get_text() == "unreadable"
    assert "no readable study.json" in study.find("pre").get_text()
    # Only the readable run is summarised; the summary notebook ran over the same folder.
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(group["n_seeds"], group["seeds"]) for group in summary["groups"]] == [(1, [0])]
    assert (tmp_path / "out" / "summary.html").exists()
