"""Notebook HTML is reduced to an allow-list and pages forbid scripts: a tampered notebook stays inert."""
import pandas as pd
import pytest

from analysis import report
from analysis.safe_html import CONTENT_POLICY, clean_html
from tampered import MARKERS, tampered_notebook

PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize("dirty, clean", [
    ("<p>a<script>alert(1)</script>b</p>", "<p>ab</p>"),
    ("<img src=x onerror=alert(1)>", "<img>"),
    (f'<img src="{PNG}" alt="plot">', f'<img src="{PNG}" alt="plot">'),
    ('<img src="data:text/html;base64,PHNjcmlwdD4=">', "<img>"),
    ('<a href="javascript:alert(1)">x</a>', "<a>x</a>"),
    ('<a href="https://example.org/a?b=1">x</a>', '<a href="https://example.org/a?b=1">x</a>'),
    ('<a href="#fig-1">x</a>', '<a href="#fig-1">x</a>'),
    ('<div style="color:red" onclick="f()" class="c">x</div>', '<div class="c">x</div>'),
    ("<style>td { color: red }</style><b>x</b>", "<b>x</b>"),
    ("<iframe src='https://example.org'></iframe><svg><script>f()</script></svg>", ""),
    ("a < b & c", "a &lt; b &amp; c"),
])
def test_clean_html_keeps_only_the_allow_list(dirty, clean):
    assert clean_html(dirty) == clean


def test_a_dataframe_table_keeps_its_structure():
    frame = pd.DataFrame({"loss": [1.5, 2.25]}, index=pd.Index([20, 56], name="depth"))
    cleaned = clean_html(frame._repr_html_())
    for tag in ("<table", "<thead>", "<tbody>", "<th>depth</th>", "<td>1.50</td>", "<td>2.25</td>"):
        assert tag in cleaned
    assert "<style" not in cleaned and "text-align" not in cleaned


def test_a_tampered_notebook_compiles_to_a_page_without_active_content():
    page = report.notebook_html(tampered_notebook(), title="tampered")
    policy = f'<meta content="{CONTENT_POLICY}" http-equiv="Content-Security-Policy"/>'
    assert page.count(policy) == 1 and page.index(policy) < page.index("<body")
    assert "<script" not in page.lower()
    assert not any(marker in page for marker in MARKERS if marker != "pwned-style")
    for attribute in ("onerror", "onmouseover", "javascript:", "https://example.com"):
        assert attribute not in page
    assert "<th>depth</th>" in page and "<td>20</td>" in page  # the notebook's own table still renders
