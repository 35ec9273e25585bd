"""Parsers for the three MovieLens ratings formats, fast on good files and exact about bad lines.

The fast path is pandas' C parser; when it rejects a file, a line-by-line scan finds the first
bad line so the error names file and line number instead of a tokenizer message.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from lrml.data.errors import ParseError

COLUMNS = ["user", "item", "rating", "timestamp"]
DTYPES = {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64}
CSV_HEADER = "userId,movieId,rating,timestamp"


def parse_ratings(data: bytes, fmt: str, origin: str) -> pd.DataFrame:
    """Ratings as a frame of user, item (raw ids), rating and timestamp.

    ``fmt`` is "csv" (header ``userId,movieId,rating,timestamp``, LF or CRLF), "udata"
    (ml-100k ``u.data``: tab separated, no header) or "dat" (``::`` separated, no header).
    ``origin`` names the file in error messages.
    """
    if fmt == "csv":
        first_line = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
        if first_line.strip() != CSV_HEADER:
            raise ParseError(f"{origin}, line 1: expected header {CSV_HEADER!r}, found {first_line!r}")
        sep, skip = ",", 1
    elif fmt == "udata":
        sep, skip = "\t", 0
    elif fmt == "dat":
        data, sep, skip = data.replace(b"::", b"\t"), "\t", 0
    else:
        raise ValueError(f"unknown ratings format {fmt!r}; expected 'csv', 'udata' or 'dat'")
    try:
        frame = pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=COLUMNS, skiprows=skip,
                            dtype=DTYPES, engine="c")
    except (ValueError, pd.errors.ParserError) as error:
        _raise_first_bad_line(data, sep, skip, origin, fmt)
        raise ParseError(f"{origin}: cannot parse ratings: {error}") from error
    if len(frame) == 0:
        raise ParseError(f"{origin}: no ratings found")
    if frame.isna().any().any():
        _raise_first_bad_line(data, sep, skip, origin, fmt)
    return frame


def _raise_first_bad_line(data: bytes, sep: str, skip: int, origin: str, fmt: str) -> None:
    """Scan line by line and raise a ParseError naming the first line that is not a rating."""
    shown_sep = "::" if fmt == "dat" else sep
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number <= skip:
            continue
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line.strip():
            continue
        fields = line.split(sep)
        problem = None
        if len(fields) != 4:
            problem = f"expected 4 fields separated by {shown_sep!r}, found {len(fields)}"
        else:
            for name, text, kind in zip(COLUMNS, fields, (int, int, float, int)):
                try:
                    kind(text)
                except ValueError:
                    problem = f"{name} {text!r} is not a number"
                    break
        if problem:
            shown = line.replace("\t", shown_sep) if fmt == "dat" else line
            raise ParseError(f"{origin}, line {number}: {problem}: {shown[:200]!r}")


def parse_titles(data: bytes, fmt: str) -> pd.DataFrame:
    """Movie titles as a frame of raw item id and title (for printing recommendations)."""
    if fmt == "csv":
        frame = pd.read_csv(io.BytesIO(data), usecols=[0, 1], header=0, names=["item", "title"],
                            dtype={"item": np.int64, "title": str})
    else:
        text = data.decode("latin-1")
        sep = "|" if fmt == "udata" else "::"
        rows = [line.split(sep)[:2] for line in text.splitlines() if line.strip()]
        frame = pd.DataFrame(rows, columns=["item", "title"])
        frame["item"] = frame["item"].astype(np.int64)
    return frame
