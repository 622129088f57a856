"""A notebook carrying active content in every place nbconvert renders, for the sanitizer tests."""
import nbformat

MARKERS = ("pwned-script", "pwned-onerror", "pwned-js-output", "pwned-svg", "pwned-raw", "pwned-link",
           "pwned-markdown-output", "pwned-style")


def tampered_notebook() -> nbformat.NotebookNode:
    """Scripts, event handlers, javascript: links, JavaScript and SVG outputs; each sets ``window.pwned``."""
    v4 = nbformat.v4
    markdown = v4.new_markdown_cell(
        "# Results\n\n<script>window.pwned = 'pwned-script'</script>\n\n"
        "<img src=x onerror=\"window.pwned = 'pwned-onerror'\">\n\n"
        "[click](javascript:window.pwned='pwned-link')\n\n"
        "<div style=\"background:url(https://example.com/pwned-style)\">styled</div>")
    code = v4.new_code_cell("display(...)")
    code.outputs = [
        v4.new_output("display_data", data={
            "text/html": "<table><thead><tr><th>depth</th></tr></thead><tbody><tr><td>20</td></tr></tbody></table>"
                         "<script>window.pwned = 'pwned-script'</script>"
                         "<img src=\"data:image/png;base64,iVBORw0KGgo=\" onerror=\"window.pwned='pwned-onerror'\">",
            "text/plain": "table"}),
        v4.new_output("display_data", data={"application/javascript": "window.pwned = 'pwned-js-output'",
                                            "text/plain": "js"}),
        v4.new_output("display_data", data={
            "image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg'><script>window.pwned='pwned-svg'</script></svg>"}),
        v4.new_output("display_data", data={
            "text/markdown": "<b onmouseover=\"window.pwned='pwned-markdown-output'\">bold</b>"}),
    ]
    raw = v4.new_raw_cell("<script>window.pwned = 'pwned-raw'</script>", metadata={"raw_mimetype": "text/html"})
    return v4.new_notebook(cells=[markdown, code, raw], metadata={"title": "<script>window.pwned=1</script>"})
