"""The code examples of README.md, found by the heading they stand under."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str, readme: Path = README) -> str:
    """The first ```python block of the section under `heading` (a markdown heading's exact text).

    The section ends at the next heading of the same or a higher level; a line inside
    a fenced code block is never a heading.
    """
    lines = readme.read_text().splitlines(keepends=True)
    level, in_fence = None, False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
            if level is not None and in_fence and line.strip() == "```python":
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                return "".join(lines[i + 1:end])
            continue
        match = None if in_fence else re.match(r"(#+) (.*?)\s*$", line)
        if match is None:
            continue
        if level is None and match.group(2) == heading:
            level = len(match.group(1))
        elif level is not None and len(match.group(1)) <= level:
            break
    where = "no heading" if level is None else "no python block under"
    raise ValueError(f"heading: {where} {heading!r} in {readme.name}")
