"""The state files a resumed search reads (the searcher's, the scheduler's rungs): each written whole or not at
all, and refused in one line, naming the version, when another version of this code wrote it."""
from __future__ import annotations

import os
import pickle

from lrml.errors import UserError

STATE_VERSION = 2  # 2: the searcher counts the trials it suggested
VERSION_KEY = "lrml_state_version"


def write_state(path: str, state: dict) -> None:
    """Pickle ``state`` (with this code's state version) to ``path`` through a partial file renamed in place."""
    partial = f"{path}.part"
    with open(partial, "wb") as handle:
        pickle.dump({**state, VERSION_KEY: STATE_VERSION}, handle)
    os.replace(partial, path)


def read_state(path: str) -> dict:
    """The state pickled at ``path``, without its version key; refused if unreadable or of another version."""
    try:
        with open(path, "rb") as handle:
            state = pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as error:
        raise UserError(f"{path}: unreadable ({type(error).__name__}): cut short, or written by another version; "
                        "the search cannot be resumed from it") from None
    found = state.pop(VERSION_KEY, None) if isinstance(state, dict) else None
    if found != STATE_VERSION:
        raise UserError(f"{path}: state version {found!r}, this code reads {STATE_VERSION}; resume the search with "
                        "the version that started it")
    return state
