"""Where a search writes: a local folder or a cloud URI (``s3://``, ``gs://``), reached through pyarrow's
filesystems, which Ray Tune also uses."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow.fs

from lrml.data import data_home

# pyarrow's S3 errors: "When <doing what> for key '...': AWS Error NETWORK_CONNECTION during HeadObject operation:
# curlCode: 7, Could not connect to server; Details: ..."
AWS_ERROR_TEXT = re.compile(r"AWS Error (?P<code>\w+) during \w+ operation: (?:curlCode: \d+, )?(?P<message>[^;\n]+)")


def is_uri(location: str) -> bool:
    """Whether ``location`` names cloud storage (``s3://``, ``gs://``) rather than a local folder."""
    return "://" in location


def resolved(location: str) -> str:
    """A local folder made absolute (Tune needs it so), or a URI without a trailing slash."""
    return location.rstrip("/") if is_uri(location) else str(Path(location).expanduser().resolve())


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem of a folder or URI (Tune's own choice of filesystems) and the path within it."""
    return pyarrow.fs.FileSystem.from_uri(resolved(location))


def local_folder(location: str) -> Path:
    """The folder on this machine for what a search keeps locally (its log): the experiment's own folder, or
    for a cloud experiment one under ``$LRML_DATA_HOME/searches`` named after its URI."""
    if not is_uri(location):
        return Path(resolved(location))
    scheme, _, rest = resolved(location).partition("://")
    return data_home() / "searches" / scheme / rest


def upload(local_file: Path, uri: str) -> None:
    """Copy ``local_file`` into the cloud folder ``uri``."""
    storage, path = filesystem(uri)
    with open(local_file, "rb") as source, storage.open_output_stream(f"{path}/{local_file.name}") as sink:
        sink.write(source.read())


def brief(error: BaseException | str) -> str:
    """What a storage error says, in a few words: a cloud API's message and code without the request around it."""
    text = str(error)
    found = AWS_ERROR_TEXT.search(text)
    return f"{found['message'].strip()} ({found['code']})" if found else text
