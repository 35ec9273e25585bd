"""Where a search writes: a local folder or a cloud URI (``s3://``, ``gs://``), reached through pyarrow's
filesystems, which Ray Tune also uses."""
from __future__ import annotations

from pathlib import Path

import pyarrow.fs


def is_uri(location: str) -> bool:
    """Whether ``location`` names cloud storage (``s3://``, ``gs://``) rather than a local folder."""
    return "://" in location


def resolved(location: str) -> str:
    """A local folder made absolute (Tune needs it so), or a URI without a trailing slash."""
    return location.rstrip("/") if is_uri(location) else str(Path(location).expanduser().resolve())


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem of a folder or URI (Tune's own choice of filesystems) and the path within it."""
    return pyarrow.fs.FileSystem.from_uri(resolved(location))
