"""Where a search's CPU time goes: ``tune/search.py`` run as a user runs it, every process it starts sampled.

Every half second the driver and all its descendants (Ray's daemons, Tune's trial processes and any Ray Train
workers) are read for the CPU time they have taken. Each process is counted as a trial's (a trial's own Tune
process or a Ray Train worker), the driver (the search's Python process: Tune's loop, the searcher, the
callbacks) or Ray's (everything else Ray runs). From these: each role's CPU seconds as a share of the search's
wall time on every core, and how many of the seconds had each number of trial processes busy (a process is
busy in a sample where it took at least half a core) with the cores the trials took meanwhile, so the tail, where
fewer trials run than cores, shows, and what lending its idle cores to the last trials gives (``--fixed-threads``
takes the lending away).

    python bench/search_cpu.py -- --seed 0 --name cpu-s0 --storage-path /tmp/lrml-cpu
    python bench/search_cpu.py -- --seed 0 --name cpu-fixed-s0 --storage-path /tmp/lrml-cpu --fixed-threads
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.5
TRIAL_TITLES = ("ray::ImplicitFunc", "ray::run_trial", "ray::RayTrainWorker")
BUSY = 0.5  # of a core over a sample: a trial process that is training rather than waiting


def role(process: psutil.Process, driver: int) -> str:
    if process.pid == driver:
        return "driver"
    try:
        title = (process.cmdline() or [""])[0]
    except psutil.Error:
        return "ray"
    return "trials" if title.startswith(TRIAL_TITLES) else "ray"


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def sample(search: subprocess.Popen) -> tuple[float, dict[str, float], Counter, Counter]:
    """Sample the search's processes until it exits: its wall seconds, each role's CPU seconds, and the seconds
    spent at each count of busy trial processes with the trials' CPU seconds in them. A process's CPU time since
    the last sample goes to the role it has now (Ray starts idle workers and later makes them trial processes)."""
    driver = psutil.Process(search.pid)
    last_used: dict[int, float] = {}
    by_role: Counter = Counter()
    busy_seconds: Counter = Counter()
    busy_trial_cpu: Counter = Counter()
    started = last = time.perf_counter()
    while search.poll() is None:
        time.sleep(SAMPLE_SECONDS)
        now = time.perf_counter()
        busy, trial_cpu = 0, 0.0
        try:
            processes = [driver, *driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in processes:
            try:
                used = cpu_seconds(process)
            except psutil.Error:
                continue
            kind, before = role(process, search.pid), last_used.get(process.pid)
            by_role[kind] += used - (before or 0.0)  # a process first seen: all it has taken so far
            if kind == "trials" and before is not None:
                busy += used - before >= BUSY * (now - last)
                trial_cpu += used - before
            last_used[process.pid] = used
        busy_seconds[busy] += now - last
        busy_trial_cpu[busy] += trial_cpu
        last = now
    return time.perf_counter() - started, dict(by_role), busy_seconds, busy_trial_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("search_args", nargs=argparse.REMAINDER, help="after --: tune/search.py's arguments")
    args = parser.parse_args()
    search_args = [arg for arg in args.search_args if arg != "--"]
    cores = os.cpu_count()
    search = subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), *search_args])
    wall, by_role, busy_seconds, busy_trial_cpu = sample(search)
    if search.returncode:
        print(f"the search exited with {search.returncode}", file=sys.stderr)
        return search.returncode
    print(f"\n`python bench/search_cpu.py -- {' '.join(search_args)}`: {wall:.0f} s wall on {cores} cores "
          "(CPU seconds of processes that ended between samples are counted to their last sample)")
    print("| role | CPU seconds | of wall x cores |\n|---|---:|---:|")
    for kind in ("trials", "driver", "ray"):
        print(f"| {kind} | {by_role.get(kind, 0.0):,.0f} | {100 * by_role.get(kind, 0.0) / (wall * cores):.1f}% |")
    print("\n| trial processes busy | seconds | of wall | cores the trials took |\n|---:|---:|---:|---:|")
    for count in sorted(busy_seconds):
        print(f"| {count} | {busy_seconds[count]:.0f} | {100 * busy_seconds[count] / wall:.1f}% | "
              f"{busy_trial_cpu[count] / busy_seconds[count]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
