"""What error messages show of a value: its repr, cut to a readable length.

Every validation message names the field, shows the value it got and says what
is allowed; a value pasted by mistake (a whole file, a 100 kB string) is shown
by its start and its length, so the message stays one readable line.
"""
from __future__ import annotations

SHOWN_CHARACTERS = 80


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)``, or its first ``limit`` characters and the full length when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
