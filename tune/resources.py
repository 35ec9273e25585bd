"""Per-trial resources and trial concurrency, computed from what the Ray cluster has.

A trial is a light Tune function that launches a TorchTrainer of ``workers`` workers. The
function reserves no CPU, only a little memory (``TRIAL_RESOURCES``: Ray needs a non-empty
request), so a trial costs exactly ``workers * cpus_per_worker`` CPUs wherever its function
lands. Giving the function even 0.01 CPU fragments nodes: two trial functions on one 1-CPU node
leave 0.98 CPU there, too little for a 1-CPU worker, and trials queue behind each other.
The training data is materialised once before the search, so no Ray Data read competes with
the workers for CPUs while trials run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TRIAL_RESOURCES = {"CPU": 0, "memory": 128 * 2**20}  # the trial function only waits on its TorchTrainer


@dataclass(frozen=True)
class ResourcePlan:
    """What each trial asks for and how many trials run at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    concurrency: int

    @property
    def worker_resources(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            resources["GPU"] = self.gpus_per_worker
        return resources

    @property
    def torch_threads(self) -> int:
        return max(1, math.floor(self.cpus_per_worker))


def plan_resources(cluster: dict[str, float], workers: int, cpus_per_worker: float,
                   gpus_per_worker: float) -> ResourcePlan:
    """Concurrency that never over-asks the cluster; a trial that cannot fit at all is an error."""
    if workers < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ValueError(f"need workers >= 1, cpus_per_worker > 0, gpus_per_worker >= 0; "
                         f"got {workers}, {cpus_per_worker}, {gpus_per_worker}")
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    fits = math.floor(cpus / (workers * cpus_per_worker) + 1e-9)
    if gpus_per_worker:
        fits = min(fits, math.floor(gpus / (workers * gpus_per_worker) + 1e-9))
    if fits < 1:
        raise ValueError(f"one trial needs {workers} x {cpus_per_worker} CPU and {workers} x {gpus_per_worker} GPU; "
                         f"the cluster has {cpus:g} CPU and {gpus:g} GPU")
    return ResourcePlan(workers, cpus_per_worker, gpus_per_worker, fits)
