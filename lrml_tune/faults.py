"""Faults of the storage a search writes to (full, read-only, gone), recognised wherever they surface: in the
driver's own writes, or in a trial's as the text of its remote error. The search then stops in one line."""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass

from ray import tune

# What a write meets when the storage fills, turns read-only or goes away (a lost network mount).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ENODEV}
# Python's text of an OSError, as a remote error carries it: "[Errno 28] No space left on device: '/path'"
OS_ERROR_TEXT = re.compile(r"\[Errno (?P<number>\d+)\] (?P<reason>[^:'\"\n]+)(?:: '(?P<path>[^']+)')?")


@dataclass(frozen=True)
class StorageFault:
    """The path a write failed on (the storage path when the error does not say) and why."""

    path: str
    reason: str

    def line(self) -> str:
        return f"cannot write to {self.path}: {self.reason}"


def storage_fault(error: BaseException | str, storage_path: str) -> StorageFault | None:
    """The storage fault behind ``error`` (an exception or any of its causes, or a remote error's text), or None."""
    texts, seen = [error] if isinstance(error, str) else [], set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return StorageFault(str(error.filename or storage_path), error.strerror)
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    for match in (match for text in texts for match in OS_ERROR_TEXT.finditer(text)):
        if int(match["number"]) in STORAGE_ERRNOS:
            return StorageFault(match["path"] or storage_path, match["reason"].strip())
    return None


class StorageWatch(tune.Callback):
    """Notes the first trial that failed on the storage; ``StopOnStorageFault`` then stops the search."""

    def __init__(self, storage_path: str):
        self.storage_path = storage_path
        self.fault: StorageFault | None = None

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.fault is None:
            self.fault = storage_fault(str(trial.get_error() or ""), self.storage_path)


class StopOnStorageFault(tune.Stopper):
    """Stops every trial once ``watch`` has seen a storage fault: the next writes would fail the same way."""

    def __init__(self, watch: StorageWatch):
        self.watch = watch

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.watch.fault is not None
