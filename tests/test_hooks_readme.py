"""The README's hook example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "Use the hooks in your own project"


def example_code() -> str:
    """The first ```python block under the heading in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(HEADING):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {HEADING!r}"
    return match.group(1)


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example_code(), "README example", "exec"), namespace)
    frame = namespace["frame"]
    assert sorted(frame.step.unique()) == [0, 2, 4]
    assert list((tmp_path / "runs" / "example" / "stats.parquet").glob("part-*.parquet"))
