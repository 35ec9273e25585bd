"""One local Ray per machine: a search that starts its own Ray holds a machine-wide lock while it runs.

Two local Ray instances on one machine break each other's trials: Ray Train's placement-group
cleaner finds "multiple active Ray instances", worker groups then never start. So a second search
refuses before it starts, saying which search holds the machine and how to run both on one Ray.
The lock is an advisory ``flock`` on a file in the system's temporary folder, shared by every user
of the machine; the kernel drops it when its process ends, however it ends.
"""
from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from lrml.errors import UserError

GCS_FLAG = "--gcs-address="
# Ray swaps 127.0.0.1 for the machine's network address; on Linux every 127.x.y.z is loopback, so a
# local search registers on 127.0.0.2 and listens on nothing outside the machine. Elsewhere
# (macOS has only 127.0.0.1), Ray chooses.
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else None
LOCK_FILE = Path(tempfile.gettempdir()) / "lrml-local-ray.lock"
SHARED_RAY_HINT = ("to run several searches at once, start one Ray for all of them (`ray start --head "
                   "--node-ip-address 127.0.0.2`) and pass its address to each (`--address 127.0.0.2:6379`)")


@contextmanager
def exclusive_local_ray(experiment: str, lock_file: Path = LOCK_FILE) -> Iterator[None]:
    """Hold the machine's local-Ray lock for ``experiment``, or refuse, naming the search that holds it."""
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            os.fchmod(descriptor, 0o666)  # every user of the machine must be able to take it after us
        except PermissionError:
            pass  # another user created it, already shared
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
            if not holder:  # the holder takes the lock an instant before it writes its name
                time.sleep(0.5)
                holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
            holder = holder or "another process"
            raise UserError(f"another search runs its own Ray on this machine ({holder}); two local Ray instances "
                            f"break each other's trials. Wait for it to end, or {SHARED_RAY_HINT}") from None
        _check_no_other_ray()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}, experiment {experiment}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the lock


def running_ray_addresses() -> list[str]:
    """The GCS address of every Ray instance running on this machine, read from its raylet's command line
    (``raylet ... --gcs-address=host:port``, as Ray starts it; ``ray.init`` looks for the same flag)."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []  # None where the process is not ours to read
        if command and "raylet" in Path(command[0]).name:
            found.update(argument.split("=", 1)[1] for part in command for argument in part.split(" ")
                         if argument.startswith(GCS_FLAG) and argument != GCS_FLAG)
    return sorted(found)


def _check_no_other_ray() -> None:
    """Refuse when a Ray that no search of ours started already runs here (a notebook's, ``ray start``'s)."""
    running = running_ray_addresses()
    if running:
        raise UserError(f"a Ray instance already runs on this machine (GCS at {', '.join(running)}): pass "
                        f"--address {running[0]} to search on it, or stop it first; {SHARED_RAY_HINT}")
