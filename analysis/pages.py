"""Where a report's files live, relative to its index: one place for every page name and link."""
from __future__ import annotations

import re

INDEX_FILE = "index.html"
SUMMARY_NAME = "summary"
SUMMARY_PAGE = f"{SUMMARY_NAME}.html"
SUMMARY_JSON = "summary.json"
ANSWERS_JSON = "answers.json"
STUDY_PAGES_DIR = "studies"


def file_name(name: str) -> str:
    """``name`` with anything but letters, digits, '.', '_' and '-' replaced, so it stays one file."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def study_page(name: str) -> str:
    """The page of the study (or notebook) called ``name``."""
    return f"{STUDY_PAGES_DIR}/{file_name(name)}.html"
