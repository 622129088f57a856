"""Open the generated reports in a real headless Chromium: no errors, no failed requests, every image drawn."""
import os
import shutil

import pytest

from analysis import report

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to drive (install it with `make browser`, "
                                                          "or point CHROMIUM at a Chromium binary)")


@pytest.fixture(scope="module")
def reports(tiny_sweep, tmp_path_factory):
    """The shared sweep point (the depth-study notebook at depth 8, tiny) compiled into reports."""
    runs_dir, study_id = tiny_sweep
    out = tmp_path_factory.mktemp("reports")
    report.build_reports(runs_dir, out)
    return out, study_id


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.mark.parametrize("page_path, min_images", [
    ("index.html", 0),
    ("summary.html", 3),
    ("studies/{study_id}.html", 5),
])
def test_page_loads_without_errors_and_images_render(browser, reports, page_path, min_images):
    out, study_id = reports
    page = browser.new_page()
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed request: {request.url}"))
    page.on("request", lambda request: request.url.startswith(("file:", "data:"))
            or problems.append(f"network request: {request.url}"))
    page.goto((out / page_path.format(study_id=study_id)).as_uri(), wait_until="load")
    images = page.evaluate("Array.from(document.images, img => [img.complete, img.naturalWidth])")
    page.close()
    assert problems == []
    assert len(images) >= min_images
    assert all(complete and width > 0 for complete, width in images), images


def test_index_links_open(browser, reports):
    out, study_id = reports
    page = browser.new_page()
    page.goto((out / "index.html").as_uri(), wait_until="load")
    hrefs = page.eval_on_selector_all("a", "links => links.map(a => a.href)")
    assert any(href.endswith("/summary.html") for href in hrefs)
    assert any(href.endswith(f"/studies/{study_id}.html") for href in hrefs)
    page.click(f"#study-{study_id} a")
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/studies/{study_id}.html") and page.title() == study_id
    page.close()


def test_a_tampered_notebook_runs_no_script(browser, tmp_path):
    """Scripts, handlers, javascript: links and JavaScript outputs of a foreign notebook stay inert in the page."""
    import nbformat

    from tampered import tampered_notebook

    notebook = tmp_path / "tampered.ipynb"
    nbformat.write(tampered_notebook(), notebook)
    index = report.build_reports(None, tmp_path / "out", studies=[notebook])
    page = browser.new_page()
    requests, dialogs = [], []
    page.on("request", lambda request: request.url.startswith("data:") or requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for path in (index, tmp_path / "out" / "studies" / "tampered.html"):
        page.goto(path.as_uri(), wait_until="load")
        page.evaluate("""for (const element of document.querySelectorAll('body *'))
                             for (const type of ['mouseover', 'click', 'error', 'load'])
                               element.dispatchEvent(new Event(type))""")
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.evaluate("document.scripts.length") == 0
    page.close()
    assert dialogs == []
    assert requests == [index.as_uri(), (tmp_path / "out" / "studies" / "tampered.html").as_uri()]
