"""A table a script keeps in a Markdown file between two marker comments, rewritten in place on each run."""
from __future__ import annotations

from pathlib import Path


def write_section(path: Path, start: str, end: str, lines: list[str]) -> None:
    """Put ``lines`` (the markers included) in place of the text from ``start`` to ``end``, or append them."""
    text = path.read_text() if path.exists() else ""
    if start in text:
        before, rest = text.split(start, 1)
        text = before + "\n".join(lines) + rest.split(end, 1)[1]
    else:
        text += "\n" + "\n".join(lines) + "\n"
    path.write_text(text)
