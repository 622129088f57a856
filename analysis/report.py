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
import html
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

import jinja2
import nbformat
import numpy as np
import pandas as pd

from analysis.answers import build_answers
from analysis.frames import to_json_value
from analysis.store import FILE_MODE, atomic_write_json, atomic_write_text, run_dirs
from analysis.summary import run_table, summary_json
from analysis.sweep import first_error, list_studies

SUMMARY_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "summary.ipynb"
STUDIES_DIR = "studies"
INDEX_FILE = "index.html"
SUMMARY_NAME = "summary"
SUMMARY_JSON = "summary.json"
ANSWERS_JSON = "answers.json"
PROGRESS_TAG = "progress"
FAILED_STATUSES = ("failed", "diverged", "unreadable")
BUDGET_NOTE = ("Budget: `make report` trains narrow networks (width 8, 200 steps, batch 32, 16x16 images) on the "
               "embedded synthetic data with 3 seeds, within 15 minutes on 2 CPU cores, so effects that need longer "
               "training are said to be unresolved. A full-size run on a GPU: python -m analysis sweep --depths 20 56 110 "
               "--seeds 0 1 2 --set width=16 --set steps=64000 --set batch_size=128 --set dataset=cifar10 "
               "--set device=cuda --set stats_every=500, then python -m analysis report runs.")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# nbconvert's lab template without the blocks that load scripts from a CDN.
OFFLINE_TEMPLATE = "offline_lab.html.j2"
OFFLINE_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
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
    """One self-contained HTML page for an executed notebook (lab template, images embedded)."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    exporter = HTMLExporter(
        template_name="lab", template_file=OFFLINE_TEMPLATE,
        extra_loaders=[jinja2.DictLoader({OFFLINE_TEMPLATE: OFFLINE_TEMPLATE_SOURCE})],
        embed_images=True, exclude_input=not show_code,
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

    ``studies`` is :func:`analysis.sweep.list_studies` output: one row per
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
            href = f"{STUDIES_DIR}/{_file_name(page.name)}.html"
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
        name = _file_name(path.stem)
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
        href = f"{STUDIES_DIR}/{name}.html"
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
    href = f"{SUMMARY_NAME}.html"
    failure = compile_notebook(executed, out_dir / href, title="Summary across depths", show_code=show_code)
    page.href = None if failure else href
    page.error = page.error or failure
    return page


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
    out_dir = Path(out_dir)
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

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 80rem;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.id { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fff1f0; } .status { font-weight: 600; } tr.bad .status { color: #b3261e; }
pre.error { white-space: pre-wrap; margin: 0; max-height: 12rem; overflow: auto; font-size: 0.85rem;
            color: #b3261e; }
.summary-link { font-size: 1.1rem; }
ol.answers li { margin-bottom: 0.8rem; } .question { font-weight: 600; margin: 0; } .answer, .evidence { margin: 0.2rem 0; }
.evidence { font-size: 0.9rem; color: #444; }
"""


def index_html(runs_dir: str | Path | None, runs: pd.DataFrame | None, summary: Page | None,
               pages: list[Page], answers: dict | None = None) -> str:
    """The index page: the five answers, summary link, studies and runs with their numbers and errors (all text escaped)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<h1>Why deep networks train, or fail to</h1>",
             f'<p class="meta">Runs folder: <code>{_esc(runs_dir if runs_dir is not None else "none")}</code>'
             f" &middot; built {_esc(now)}{_esc(_counts(runs))}</p>",
             _answers_section(answers),
             "<h2>Summary across runs</h2>", _summary_section(runs_dir, summary),
             f"<h2>Studies ({len(pages)})</h2>", _studies_table(pages)]
    if runs is not None:
        parts += [f"<h2>Runs ({len(runs)})</h2>", _runs_table(runs, pages)]
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>Trainability reports</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _answers_section(answers: dict | None) -> str:
    """The five questions, each with its computed answer and links to the pages its numbers come from."""
    if not answers:
        return ""
    items = []
    for question in answers["questions"]:
        links = ", ".join(f'<a href="{_href(link)}">{_esc(link)}</a>' for link in question["evidence"])
        items.append(f'<li id="{_esc(question["id"])}"><p class="question">{_esc(question["question"])}</p>'
                     f'<p class="answer">{_esc(question["answer"])}</p>'
                     + (f'<p class="evidence">Evidence: {links}</p>' if links else "") + "</li>")
    return ("<h2>Five questions, answered from these runs</h2>\n"
            f'<p class="meta">{_esc(BUDGET_NOTE)} Numbers as JSON: <a href="{_href(ANSWERS_JSON)}">'
            f"{ANSWERS_JSON}</a>.</p>\n<ol class=\"answers\">" + "\n".join(items) + "</ol>")


def _summary_section(runs_dir: str | Path | None, summary: Page | None) -> str:
    if summary is None:
        reason = "no runs folder given" if runs_dir is None else "no runs found"
        return f"<p>No summary: {_esc(reason)}.</p>"
    parts = []
    if summary.href:
        parts.append(f'<p class="summary-link"><a href="{_href(summary.href)}">Every configuration over its seeds: '
                     "final loss and accuracy against depth, residual against plain, gradient flow, all runs</a> "
                     f'(numbers as JSON: <a href="{_href(SUMMARY_JSON)}">{SUMMARY_JSON}</a>)</p>')
    if summary.error:
        parts.append(f'<p class="status">Summary {_esc(summary.status)}:</p>{_error(summary.error)}')
    return "\n".join(parts)


def _studies_table(pages: list[Page]) -> str:
    if not pages:
        return "<p>No executed studies.</p>"
    rows = []
    for page in pages:
        link = f'<a href="{_href(page.href)}">report</a>' if page.href else "no report"
        rows.append(
            f'<tr id="study-{_esc(page.name)}"{_bad(page.status, page.error)}>'
            f"<td class=\"id\">{_esc(page.name)}</td><td>{_esc(page.kind)}</td>"
            f"<td class=\"status\">{_esc(page.status)}</td>"
            f"<td class=\"num\">{_esc(_blank(page.depth))}</td><td>{_esc(_blank(page.variants))}</td>"
            f"<td>{link}</td><td>{_error(page.error)}</td></tr>")
    return _table(["study", "kind", "status", "depth", "variants", "report", "error"], rows)


def _runs_table(runs: pd.DataFrame, pages: list[Page]) -> str:
    if runs.empty:
        return "<p>No runs.</p>"
    study_of = {run_id: page for page in pages for run_id in page.run_ids}
    rows = []
    for run in runs.to_dict("records"):
        page = study_of.get(run["run_id"])
        study = (f'<a href="{_href(page.href)}">{_esc(page.name)}</a>' if page and page.href
                 else _esc(page.name if page else ""))
        rows.append(
            f'<tr id="run-{_esc(run["run_id"])}"{_bad(run["status"], run["error"])}>'
            f"<td class=\"id\">{_esc(run['run_id'])}</td><td class=\"num\">{_esc(_blank(run['depth']))}</td>"
            f"<td>{_esc(_blank(run['variant']))}</td><td class=\"status\">{_esc(_blank(run['status']))}</td>"
            f"<td class=\"num\">{_esc(_steps(run))}</td>"
            f"<td class=\"num\">{_esc(format_number(run.get('final_train_loss')))}</td>"
            f"<td class=\"num\">{_esc(format_number(run.get('final_train_accuracy')))}</td>"
            f"<td class=\"num\">{_esc(format_number(run.get('final_val_accuracy')))}</td>"
            f"<td class=\"id\">{study}</td><td>{_error(_run_error(run))}</td></tr>")
    return _table(["run", "depth", "variant", "status", "steps", "final train loss", "final train accuracy",
                   "final val accuracy", "study", "error"], rows)


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


def _table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _bad(status: object, error: object) -> str:
    return ' class="bad"' if status in FAILED_STATUSES or _text(error) else ""


def _error(error: object) -> str:
    """An error message as escaped preformatted text, without terminal color codes (tracebacks have them)."""
    error = _text(error)
    return f'<pre class="error">{_esc(ANSI_ESCAPE.sub("", error))}</pre>' if error else ""


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


def _file_name(name: str) -> str:
    """``name`` with anything but letters, digits, '.', '_' and '-' replaced, so it stays one file."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(path: str) -> str:
    return _esc(quote(path))


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
        raise SystemExit(f"paths: {bad}: give one runs folder and/or existing executed notebooks (.ipynb)")
    runs_dir = folders[0] if folders else runs_dir_of(notebooks)
    index = build_reports(runs_dir, args.out, show_code=args.show_code, studies=notebooks or None,
                          kernel=args.kernel)
    print(f"report: {index.resolve()}")
    return 0
