"""A table a script keeps in a Markdown file between two marker comments, rewritten in place on each run."""
from __future__ import annotations

from pathlib import Path


def replace_section(text: str, start: str, end: str, lines: list[str]) -> str:
    """``text`` with ``lines`` (the markers included) in place of its part from ``start`` to ``end``, or appended."""
    if start in text:
        before, rest = text.split(start, 1)
        return before + "\n".join(lines) + rest.split(end, 1)[1]
    return text + "\n" + "\n".join(lines) + "\n"


def write_section(path: Path, start: str, end: str, lines: list[str]) -> None:
    """Put ``lines`` in place of the file's section from ``start`` to ``end``, or append them."""
    path.write_text(replace_section(path.read_text() if path.exists() else "", start, end, lines))
