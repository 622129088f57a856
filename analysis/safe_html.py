"""HTML from notebooks, reduced to an allow-list, and a page policy that runs no script.

A report compiles notebooks it did not necessarily write (a study folder on a
shared file system, a notebook given by path), so their HTML is treated as
untrusted. Two layers keep it inert:

- :func:`clean_html` keeps only document tags (text, lists, tables, code,
  headings) and harmless attributes; ``<script>`` and ``<style>`` elements go
  with their content, event-handler attributes and ``style`` go, links keep
  only http(s), mailto and in-page or relative targets, and images only
  ``data:`` PNG, JPEG or GIF sources. It serves nbconvert's ``clean_html``
  filter, which the exporter applies to markdown cells, HTML and markdown
  outputs and raw cells when ``sanitize_html`` is on (JavaScript outputs are
  then dropped).
- :data:`CONTENT_POLICY` is set on every page as a Content-Security-Policy:
  no script of any kind, and no request except ``data:`` images and fonts, so
  anything a sanitizer might miss still cannot run or reach the network.
"""
from __future__ import annotations

import re
from urllib.parse import urlparse

import bleach

CONTENT_POLICY = ("default-src 'none'; img-src data:; font-src data:; style-src 'unsafe-inline'; "
                  "base-uri 'none'; form-action 'none'")
CONTENT_POLICY_META = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">'

TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details", "div",
    "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p",
    "pre", "q", "s", "samp", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul",
})
COMMON_ATTRIBUTES = frozenset({"class", "id", "title", "align", "lang", "dir"})
TAG_ATTRIBUTES = {"a": {"href"}, "img": {"src", "alt", "width", "height"}, "td": {"colspan", "rowspan"},
                  "th": {"colspan", "rowspan", "scope"}, "ol": {"start"}, "col": {"span"},
                  "colgroup": {"span"}}
LINK_SCHEMES = frozenset({"", "http", "https", "mailto"})
IMAGE_SOURCE = re.compile(r"data:image/(png|jpeg|gif);base64,[A-Za-z0-9+/=\s]*", re.IGNORECASE)
DROPPED_ELEMENTS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name in COMMON_ATTRIBUTES:
        return True
    if name not in TAG_ATTRIBUTES.get(tag, ()):
        return False
    if tag == "a" and name == "href":
        return urlparse(value.strip()).scheme.lower() in LINK_SCHEMES
    if tag == "img" and name == "src":
        return IMAGE_SOURCE.fullmatch(value.strip()) is not None
    return True


_CLEANER = bleach.Cleaner(tags=TAGS, attributes=_allowed_attribute, protocols=LINK_SCHEMES - {""} | {"data"},
                          strip=True, strip_comments=True)


def clean_html(html: str | bytes) -> str:
    """``html`` with only allow-listed tags and attributes (see the module docstring)."""
    text = html.decode() if isinstance(html, bytes) else str(html)
    return _CLEANER.clean(DROPPED_ELEMENTS.sub("", text))
