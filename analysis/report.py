"""Compile executed notebooks into self-contained HTML reports and an index.

``python -m analysis report runs/ --out reports/`` writes, for a runs folder:

- ``reports/studies/<study_id>.html``: each executed study notebook of
  ``runs/studies/<study_id>/`` (code hidden unless ``--show-code``);
- ``reports/summary.ipynb`` and ``reports/summary.html``: ``notebooks/summary.ipynb``
  executed with papermill over every run (parameter ``runs_dir``);
- ``reports/summary.json``: every configuration (all settings but the seed)
  with its seeds and each value's mean, sd, min, max and per-seed values
  (:func:`analysis.summary.summary_json`; NaN written as null);
- ``reports/index.html``: links to the summary and every study report (by
  depth), each run's final numbers and status, and the errors of failed runs
  and studies.

Outputs of cells tagged ``progress`` (the training cell's progress bars) stay
in the executed notebooks and are left out of the HTML.

Executed notebooks may also be given directly (``python -m analysis report
out.ipynb --out reports/``); their runs folder is then taken from the
notebooks' papermill parameter ``runs_dir`` when that folder exists.

Every page is one file: images are embedded as ``data:`` URIs, and the
scripts nbconvert's lab template loads from a CDN (require.js, MathJax,
mermaid, widgets) are left out, so the pages open without a network. LaTeX in
markdown therefore shows as source. Every file is written atomically.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import jinja2
import nbformat
import numpy as np
import pandas as pd

from analysis.answers import build_answers
from analysis.frames import to_json_value
from analysis.pages import (ANSWERS_JSON, INDEX_FILE, SUMMARY_JSON, SUMMARY_NAME, SUMMARY_PAGE, file_name,
                            study_page)
from analysis.safe_html import CONTENT_POLICY_META, clean_html
from analysis.store import FILE_MODE, atomic_write_json, atomic_write_text, first_error, list_studies, run_dirs
from analysis.summary import run_table, summary_json

SUMMARY_NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "summary.ipynb"
PROGRESS_TAG = "progress"
FAILED_STATUSES = ("failed", "diverged", "unreadable", "cancelled", "interrupted")
BUDGET_NOTE = ("Budget: `make report` trains narrow networks (width 8, 200 steps, batch 32, 16x16 images) on the "
               "embedded synthetic data with 3 seeds, within 15 minutes on 2 CPU cores, so effects that need longer "
               "training are said to be unresolved. A full-size run on a GPU: python -m analysis sweep --depths 20 56 110 "
               "--seeds 0 1 2 --set width=16 --set steps=64000 --set batch_size=128 --set dataset=cifar10 "
               "--set device=cuda --set stats_every=500, then python -m analysis report runs.")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# nbconvert's lab template without the blocks that load scripts from a CDN, and with a policy that runs none.
OFFLINE_TEMPLATE = "offline_lab.html.j2"
OFFLINE_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{% block html_head_js %}""" + CONTENT_POLICY_META + """{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
"""


@dataclass
class Page:
    """One compiled notebook: where its HTML went, or why there is none."""

    name: str
    status: str
    error: str | None = None
    href: str | None = None
    depth: object = None
    variants: str | None = None
    run_ids: tuple[str, ...] = ()
    kind: str = "depth"


def notebook_html(notebook: nbformat.NotebookNode, *, title: str, show_code: bool = False) -> str:
    """One self-contained HTML page for an executed notebook (lab template, images embedded).

    The notebook's HTML is sanitized and the page forbids scripts (:mod:`analysis.safe_html`), so a
    tampered or foreign notebook cannot run code in the reader's browser.
    """
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    exporter = HTMLExporter(
        template_name="lab", template_file=OFFLINE_TEMPLATE,
        extra_loaders=[jinja2.DictLoader({OFFLINE_TEMPLATE: OFFLINE_TEMPLATE_SOURCE})],
        embed_images=True, sanitize_html=True, filters={"clean_html": clean_html}, exclude_input=not show_code,
        exclude_input_prompt=not show_code, exclude_output_prompt=not show_code,
        config=Config({"TagRemovePreprocessor": {"enabled": True, "remove_all_outputs_tags": {PROGRESS_TAG}}}),
    )
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    return body


def compile_notebook(path: str | Path, html_path: Path, *, title: str, show_code: bool) -> str | None:
    """Write ``html_path`` for the notebook at ``path``; return why that failed, or None."""
    try:
        notebook = nbformat.read(path, as_version=4)
        atomic_write_text(html_path, notebook_html(notebook, title=title, show_code=show_code))
    except Exception as exc:  # one broken notebook must not stop the other reports
        failure = f"could not compile {path}: {type(exc).__name__}: {exc}"
        warnings.warn(failure, stacklevel=2)
        return failure
    return None


def compile_studies(studies: pd.DataFrame, out_dir: Path, *, show_code: bool) -> list[Page]:
    """Compile each study's notebook to ``out_dir/studies/<study_id>.html``.

    ``studies`` is :func:`analysis.store.list_studies` output: one row per
    study with ``study_id, status, error, depth, variants, notebook, run_ids``.
    """
    pages = []
    for study in studies.to_dict("records"):
        run_ids = study.get("run_ids")
        page = Page(str(study["study_id"]), str(study["status"]), _text(study.get("error")),
                    depth=study.get("depth"), variants=_text(study.get("variants")),
                    run_ids=tuple(run_ids) if isinstance(run_ids, (list, tuple)) else (),
                    kind=_text(study.get("kind")) or "depth")
        notebook = _text(study.get("notebook"))
        if notebook and Path(notebook).exists():
            href = study_page(page.name)
            failure = compile_notebook(notebook, out_dir / href, title=page.name, show_code=show_code)
            if failure:
                page.error = "\n".join(filter(None, [page.error, failure]))
            else:
                page.href = href
        elif page.status == "complete":
            page.error = "the executed notebook is missing from the study folder"
        pages.append(page)
    return pages


def compile_notebooks(paths: Iterable[str | Path], out_dir: Path, *, show_code: bool) -> list[Page]:
    """Compile notebooks given by path; status and error come from the notebook itself."""
    pages, names = [], set()
    for path in map(Path, paths):
        name = file_name(path.stem)
        while name in names:
            name += "-1"
        names.add(name)
        page = Page(name, "complete")
        try:
            notebook = nbformat.read(path, as_version=4)
            parameters = notebook.metadata.get("papermill", {}).get("parameters", {})
            page.depth, page.variants = parameters.get("depth"), parameters.get("variants")
            page.error = first_error(notebook.cells)
            page.status = "failed" if page.error else "complete"
        except Exception as exc:  # reported in the index like any failed study
            pages.append(Page(name, "unreadable", f"{type(exc).__name__}: {exc}"))
            continue
        href = study_page(name)
        failure = compile_notebook(path, out_dir / href, title=name, show_code=show_code)
        page.href = None if failure else href
        page.error = page.error or failure
        pages.append(page)
    return pages


def _by_depth(page: Page) -> tuple:
    """Sort key: studies by numeric depth (those without one last), then by name."""
    try:
        return (0, float(page.depth), page.name)
    except (TypeError, ValueError):
        return (1, 0.0, page.name)


def runs_dir_of(notebooks: Iterable[str | Path]) -> Path | None:
    """The existing folder named by the first notebook's papermill parameter ``runs_dir``, if any."""
    for path in notebooks:
        try:
            parameters = nbformat.read(path, as_version=4).metadata.get("papermill", {}).get("parameters", {})
        except Exception:  # unreadable notebooks are reported when compiled
            continue
        if parameters.get("runs_dir") and Path(parameters["runs_dir"]).is_dir():
            return Path(parameters["runs_dir"])
    return None


def execute_summary(runs_dir: str | Path, out_dir: Path, *, kernel: str = "python3",
                    show_code: bool = False) -> Page:
    """Execute ``notebooks/summary.ipynb`` over ``runs_dir`` and compile it to ``summary.html``."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{SUMMARY_NAME}.", suffix=".ipynb")
    os.close(fd)
    page = Page(SUMMARY_NAME, "complete")
    try:
        try:
            papermill.execute_notebook(str(SUMMARY_NOTEBOOK), tmp, kernel_name=kernel, progress_bar=False,
                                       parameters={"runs_dir": str(Path(runs_dir).resolve())})
        except Exception as exc:  # the partial notebook still shows where it stopped
            page.status, page.error = "failed", f"{type(exc).__name__}: {exc}".strip()
            warnings.warn(f"the summary notebook failed: {ANSI_ESCAPE.sub('', page.error)}", stacklevel=2)
        if Path(tmp).stat().st_size == 0:
            return page
        executed = out_dir / f"{SUMMARY_NAME}.ipynb"
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, executed)
    finally:
        Path(tmp).unlink(missing_ok=True)
    href = SUMMARY_PAGE
    failure = compile_notebook(executed, out_dir / href, title="Summary across depths", show_code=show_code)
    page.href = None if failure else href
    page.error = page.error or failure
    return page


def checked_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, or a ValueError when it names something that is not a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out: {out_dir} exists and is not a folder")
    return out_dir


def build_reports(runs_dir: str | Path | None, out_dir: str | Path, *, show_code: bool = False,
                  studies: Iterable[str | Path] | None = None, kernel: str = "python3") -> Path:
    """Write every study report, the summary and ``index.html`` under ``out_dir``; return the index path.

    ``studies=None`` compiles the studies found in ``<runs_dir>/studies/``;
    a list of executed notebooks compiles those instead. ``runs_dir=None``
    (only with ``studies``) leaves out the summary and the runs table.
    """
    if runs_dir is None and studies is None:
        raise ValueError("runs_dir: give a runs folder, or notebooks in studies, or both")
    if runs_dir is not None and not Path(runs_dir).is_dir():
        raise ValueError(f"runs_dir: {str(runs_dir)!r} is not a folder")
    out_dir = checked_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if studies is None:
        pages = compile_studies(list_studies(runs_dir), out_dir, show_code=show_code)
    else:
        pages = compile_notebooks(studies, out_dir, show_code=show_code)
    runs, summary, answers = None, None, None
    if runs_dir is not None:
        runs = run_table(runs_dir)
        atomic_write_json(out_dir / SUMMARY_JSON, to_json_value(summary_json(runs)))
        answers = build_answers(runs, list_studies(runs_dir))
        atomic_write_json(out_dir / ANSWERS_JSON, answers)
        if run_dirs(runs_dir):
            summary = execute_summary(runs_dir, out_dir, kernel=kernel, show_code=show_code)
    pages.sort(key=_by_depth)
    index = out_dir / INDEX_FILE
    atomic_write_text(index, index_html(runs_dir, runs, summary, pages, answers))
    return index


# ---------------------------------------------------------------------------- index page

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("analysis", "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def index_html(runs_dir: str | Path | None, runs: pd.DataFrame | None, summary: Page | None,
               pages: list[Page], answers: dict | None = None) -> str:
    """The index page: the five answers, summary link, studies and runs with their numbers and errors.

    Rendered from ``templates/index.html.j2`` with autoescaping, so every value is shown as text.
    """
    study_of = {run_id: page for page in pages for run_id in page.run_ids}
    return TEMPLATES.get_template("index.html.j2").render(
        content_policy_meta=CONTENT_POLICY_META, budget_note=BUDGET_NOTE, answers=answers,
        answers_json=ANSWERS_JSON, summary_json=SUMMARY_JSON, summary=summary,
        runs_dir="none" if runs_dir is None else str(runs_dir), runs_dir_given=runs_dir is not None,
        built=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), counts=_counts(runs),
        studies=[_study_row(page) for page in pages],
        runs=None if runs is None else [_run_row(run, study_of.get(run["run_id"])) for run in runs.to_dict("records")],
    )


def _study_row(page: Page) -> dict:
    return {"name": page.name, "kind": page.kind, "status": page.status, "depth": _blank(page.depth),
            "variants": _blank(page.variants), "href": page.href, "error": _error_text(page.error),
            "bad": _bad(page.status, page.error)}


def _run_row(run: dict, page: Page | None) -> dict:
    return {"run_id": run["run_id"], "depth": _blank(run["depth"]), "variant": _blank(run["variant"]),
            "status": _blank(run["status"]), "steps": _steps(run),
            **{name: format_number(run.get(name))
               for name in ("final_train_loss", "final_train_accuracy", "final_val_accuracy")},
            "study": page.name if page else "", "study_href": page.href if page else None,
            "error": _error_text(_run_error(run)), "bad": _bad(run["status"], run["error"])}


def _run_error(run: dict) -> str | None:
    """A run's error, or for a diverged run the step where its loss stopped being finite."""
    if run.get("status") == "diverged" and _text(run.get("diverged_step")) and not _text(run.get("error")):
        return f"diverged: non-finite loss at step {int(float(run['diverged_step']))}"
    return _text(run.get("error"))


def format_number(value: object) -> str:
    """Four decimals; 'nan'/'inf' as such; empty for missing values."""
    if value is None or value is pd.NA:
        return ""
    value = float(value)
    if np.isnan(value):
        return "nan"
    return f"{value:.4f}" if np.isfinite(value) else ("inf" if value > 0 else "-inf")


def _steps(run: dict) -> str:
    done, total = _blank(run.get("steps_completed")), _blank(run.get("steps"))
    return f"{done}/{total}" if total else done


def _counts(runs: pd.DataFrame | None) -> str:
    if runs is None or runs.empty:
        return ""
    counts = runs["status"].fillna("unknown").value_counts()
    return " · " + ", ".join(f"{count} {status}" for status, count in counts.items())


def _bad(status: object, error: object) -> bool:
    return status in FAILED_STATUSES or bool(_text(error))


def _error_text(error: object) -> str | None:
    """An error message without terminal color codes (tracebacks have them), or None."""
    error = _text(error)
    return ANSI_ESCAPE.sub("", error) if error else None


def _text(value: object) -> str | None:
    """A string, or None for missing values (None, NaN, empty)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return str(value) or None


def _blank(value: object) -> str:
    """Text for a table cell: empty for missing values, whole floats without '.0'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _text(value)
    return "" if text is None else text


# ---------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a runs folder (with studies/ inside), or executed notebooks (.ipynb)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default: reports)")
    parser.add_argument("--show-code", action="store_true", help="show the notebooks' code cells")
    parser.add_argument("--kernel", default="python3", help="kernel for the summary notebook (default: python3)")


def run(args: argparse.Namespace) -> int:
    """Build the reports; exit status 0 once the index is written (failures are listed in it and warned about)."""
    folders = [path for path in args.paths if path.is_dir()]
    notebooks = [path for path in args.paths if path.suffix == ".ipynb" and path.is_file()]
    other = [path for path in args.paths if path not in folders and path not in notebooks]
    if other or len(folders) > 1:
        bad = ", ".join(map(str, other or folders))
        raise ValueError(f"paths: {bad}: give one runs folder and/or existing executed notebooks (.ipynb)")
    runs_dir = folders[0] if folders else runs_dir_of(notebooks)
    index = build_reports(runs_dir, args.out, show_code=args.show_code, studies=notebooks or None,
                          kernel=args.kernel)
    print(f"report: {index.resolve()}")
    return 0
