"""Faults of the storage a search writes to (full, read-only, gone), recognised wherever they surface: in the
driver's own writes, or in a trial's as the text of its remote error. The search then stops in one line."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from ray import tune

from lrml_tune.sweep.storage import brief, filesystem, is_uri

# What a write meets when the storage fills, turns read-only or goes away (a lost network mount).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ENODEV}
PROBE_BYTES = 1 << 20  # a write the size of a small checkpoint file
RESERVE_FILE = ".lrml-reserve"
# Tune's experiment state takes some 13 KB a trial and the searcher's state some 3 KB: room for both, twice over
RESERVE_BYTES_PER_TRIAL, RESERVE_BYTES_MIN = 32 << 10, 4 << 20
# Python's text of an OSError, as a remote error carries it: "[Errno 28] No space left on device: '/path'";
# pyarrow writes "[errno 28] No space left on device"
OS_ERROR_TEXT = re.compile(r"\[Errno (?P<number>\d+)\] (?P<reason>[^:'\"\n]+)(?:: '(?P<path>[^']+)')?", re.IGNORECASE)


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
            quoted = OS_ERROR_TEXT.search(error.strerror or "")  # pyarrow's strerror quotes the system's
            return StorageFault(str(error.filename or storage_path), quoted["reason"].strip() if quoted else error.strerror)
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    for text in texts:  # the innermost quoted error names the reason: "[Errno 28] Error writing ...: [errno 28] No space"
        found = [match for match in OS_ERROR_TEXT.finditer(text) if int(match["number"]) in STORAGE_ERRNOS]
        if found:
            path = next((match["path"] for match in found if match["path"]), storage_path)
            return StorageFault(path, found[-1]["reason"].strip())
    return None


def probe(storage_path: str) -> StorageFault | None:
    """The storage fault a test write of ``PROBE_BYTES`` meets on ``storage_path``, or None. A trial that failed
    on a full disk may leave no error text to read (Ray's own error file could not be written either)."""
    fs, root = filesystem(storage_path)
    path = f"{root}/.lrml-write-probe-{os.getpid()}"
    try:
        with fs.open_output_stream(path) as out:
            out.write(bytes(PROBE_BYTES))
    except OSError as error:
        return storage_fault(error, storage_path) or StorageFault(storage_path, brief(error))
    finally:
        try:
            fs.delete_file(path)
        except OSError:
            pass
    return None


class Reserve:
    """Space a search holds in its local experiment folder and gives back when the storage fills, so that its
    last writes (Tune's experiment state, the searcher's state), which a resume reads, are written whole.

    Given back, the file keeps only the fault that freed it: the watch that saw the fault may be Tune's
    restored copy, and this file is what the driver can read of it.
    """

    def __init__(self, experiment: str, trials: int):
        self.path = None if is_uri(experiment) else Path(experiment) / RESERVE_FILE
        self.size = max(RESERVE_BYTES_MIN, trials * RESERVE_BYTES_PER_TRIAL)

    def hold(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as handle:
                handle.write(bytes(self.size))
                os.fsync(handle.fileno())

    def give_back(self, fault: StorageFault) -> None:
        if self.path is not None and self.path.exists():
            self.path.write_text(json.dumps(asdict(fault)))  # truncates first: the space is free before the write

    def fault(self) -> StorageFault | None:
        """The fault the reserve was given back for, or None while it is held."""
        if self.path is None or not self.path.exists() or self.path.stat().st_size == self.size:
            return None
        return StorageFault(**json.loads(self.path.read_text()))

    def drop(self) -> StorageFault | None:
        """Remove the reserve at the search's end; the fault it was given back for, if it was."""
        fault = self.fault()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return fault


class StorageWatch(tune.Callback):
    """Notes the first trial that failed on the storage, frees the reserve, and interrupts the search as Ctrl-C
    does: Tune saves the experiment and stops its trials, and the searcher stays open, so ``--resume`` continues
    every trial left once the storage is fixed (a ``Stopper``'s ``stop_all`` would mark the search finished)."""

    def __init__(self, storage_path: str, reserve: Reserve):
        self.storage_path = storage_path
        self.reserve = reserve
        self.fault: StorageFault | None = None

    def __getstate__(self) -> dict:
        """Tune saves its callbacks with the experiment: a resumed search trusts the storage again."""
        return {**self.__dict__, "fault": None}

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.fault is None:
            self.fault = storage_fault(str(trial.get_error() or ""), self.storage_path) or probe(self.storage_path)
            if self.fault is not None:
                self.reserve.give_back(self.fault)
                os.kill(os.getpid(), signal.SIGINT)  # Tune's own handler: the experiment is saved and stopped
