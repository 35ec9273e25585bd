"""Shared fixtures: the real MovieLens files in ../shared/data and an isolated data home per test session."""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LRML_SHARED_DATA", REPO.parent / "shared" / "data"))
ML_100K = SHARED_DATA / "ml-100k"
ML_LATEST_SMALL = SHARED_DATA / "ml-latest-small"
SEED_SKETCH = SHARED_DATA.parent / "reference" / "seed_lrml.py"

# The tests start their own Ray clusters on loopback; processes joining them need no token.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def require(path: Path) -> Path:
    """Skip the test, saying why, when a file it reads is not on this machine."""
    if not path.exists():
        pytest.skip(f"{path} is absent (real MovieLens files are read from ../shared/data; set LRML_SHARED_DATA)")
    return path


def terminated_trials(experiment: Path) -> dict[str, str]:
    """Trial id -> result.json text of each trial that the search's saved state marks finished.

    Tune writes a trial's last row (``"done": true``) before it has saved that epoch's checkpoint and
    marked the trial TERMINATED; a search stopped in between runs that epoch again on resume. Only the
    saved state says which trials a resume keeps as they are. A trial the state marks finished before its
    ``result.json`` can be found (it happened once in CI) is left out until it can.
    """
    states = sorted(experiment.glob("experiment_state-*.json"))  # named by the time the search started
    if not states:
        return {}
    try:
        trials = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
    except json.JSONDecodeError:  # read while Tune was writing it
        return {}
    found = {trial["trial_id"]: next(experiment.glob(f"run_trial_{trial['trial_id']}_*/result.json"), None)
             for trial in trials if trial["status"] == "TERMINATED"}
    return {trial: result.read_text() for trial, result in found.items() if result is not None}


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory) -> Path:
    """Every test prepares datasets under a fresh temporary data home, never the user's cache."""
    home = tmp_path_factory.mktemp("lrml-home")
    os.environ["LRML_DATA_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def ml100k_dataset(data_home):
    from lrml.data import load_dataset, prepare
    return load_dataset(prepare("ml-100k", require(ML_100K)))


@pytest.fixture(scope="session")
def small_dataset(data_home):
    from lrml.data import load_dataset, prepare
    return load_dataset(prepare())


RAY_PROGRAMS = ("gcs_server", "raylet", "ray::", "default_worker.py", "dashboard.py", "dashboard/agent.py",
                "runtime_env/agent", "log_monitor.py", "monitor.py", "ray_client_server", "setup_worker.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now: every probe stays bound until all are picked, so
    the system cannot hand out one port twice (as separate probes may)."""
    with ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket())
            probe.bind((host, 0))
            ports.append(probe.getsockname()[1])
        return ports


@contextmanager
def process_group(rank: int, world: int, port: int, backend: str = "gloo") -> Iterator[None]:
    """A test worker's default process group over loopback, torn down only once every worker got through (a
    barrier): torn down as soon as each was done, one gloo process aborted ("terminate called without an active
    exception") in about 1 run of 5 here."""
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def processes(matches: Callable[[str, Callable[[], list[str]]], bool]) -> dict[int, str]:
    """Process id -> command line of every other process on this machine for which ``matches(command, files)``
    holds, ``files()`` giving the paths the process holds open (read only when asked: it costs a readlink each)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if matches(command, lambda: [os.readlink(fd) for fd in (entry / "fd").iterdir()]):
                found[int(entry.name)] = command
        except OSError:
            continue  # ended meanwhile, or not ours to read
    return found


def ray_processes() -> dict[int, str]:
    """Process id -> command line of every Ray process on this machine."""
    return processes(lambda command, files: any(program in command for program in RAY_PROGRAMS) and "/ray/" in command
                     or command.startswith("ray::"))


@pytest.fixture(scope="session", autouse=True)
def no_ray_left_behind():
    """After the whole run, no Ray process that the tests started may still be alive."""
    before = set(ray_processes())
    yield
    deadline = time.time() + 60  # Ray's processes take a few seconds to notice that their cluster is gone
    while (left := {pid: command for pid, command in ray_processes().items() if pid not in before}):
        if time.time() > deadline:
            pytest.fail(f"Ray processes left behind: {left}")
        time.sleep(1)
