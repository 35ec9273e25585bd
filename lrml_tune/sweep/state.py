"""The state files a resumed search reads (the searcher's, the scheduler's rungs), in a local folder or on cloud
storage: each written whole or not at all, and refused in one line, naming the version, when another version of
this code wrote it."""
from __future__ import annotations

import os
import pickle

import pyarrow.fs

from lrml.errors import UserError
from lrml_tune.sweep.storage import filesystem, is_uri

STATE_VERSION = 2  # 2: the searcher counts the trials it suggested
VERSION_KEY = "lrml_state_version"


def write_state(location: str, state: dict) -> None:
    """Pickle ``state`` (with this code's state version) to ``location``: through a partial file renamed in place,
    or as one object on cloud storage, which replaces an object whole."""
    data = pickle.dumps({**state, VERSION_KEY: STATE_VERSION})
    if is_uri(location):
        storage, path = filesystem(location)
        with storage.open_output_stream(path) as sink:
            sink.write(data)
        return
    partial = f"{location}.part"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, location)


def state_exists(location: str) -> bool:
    storage, path = filesystem(location)
    return storage.get_file_info(path).type == pyarrow.fs.FileType.File


def read_state(path: str) -> dict:
    """The state pickled at ``path`` (a file or a URI), without its version key; refused if unreadable or of
    another version."""
    storage, within = filesystem(path)
    try:
        with storage.open_input_stream(within) as handle:
            state = pickle.loads(handle.read())
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as error:
        raise UserError(f"{path}: unreadable ({type(error).__name__}): cut short, or written by another version; "
                        "the search cannot be resumed from it") from None
    found = state.pop(VERSION_KEY, None) if isinstance(state, dict) else None
    if found != STATE_VERSION:
        raise UserError(f"{path}: state version {found!r}, this code reads {STATE_VERSION}; resume the search with "
                        "the version that started it")
    return state
