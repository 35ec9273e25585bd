"""Per-trial resources and trial concurrency, computed from what the Ray cluster has.

A trial is a light Tune function that launches a TorchTrainer of ``workers`` workers. The
function reserves no CPU, only a little memory (``TRIAL_RESOURCES``: Ray needs a non-empty
request), so a trial costs exactly ``workers * cpus_per_worker`` CPUs wherever its function
lands. Giving the function even 0.01 CPU fragments nodes: two trial functions on one 1-CPU node
leave 0.98 CPU there, too little for a 1-CPU worker, and trials queue behind each other.
The training data is materialised once before the search, so no Ray Data read competes with
the workers for CPUs while trials run. A cluster that autoscales from zero workers holds no trial
at the start; there the user says how many trials to run at once and the autoscaler adds nodes.
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
    fits_now: int  # trials the cluster holds as it is; fewer than ``concurrency`` when it must scale up

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
                   gpus_per_worker: float, concurrency: int | None = None) -> ResourcePlan:
    """Trials at once: ``concurrency`` when given (an autoscaling cluster grows to it), otherwise as
    many as the cluster holds now, which must be at least one."""
    if workers < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ValueError(f"need workers >= 1, cpus_per_worker > 0, gpus_per_worker >= 0; "
                         f"got {workers}, {cpus_per_worker}, {gpus_per_worker}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1; got {concurrency}")
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    fits = math.floor(cpus / (workers * cpus_per_worker) + 1e-9)
    if gpus_per_worker:
        fits = min(fits, math.floor(gpus / (workers * gpus_per_worker) + 1e-9))
    if concurrency is None and fits < 1:
        raise ValueError(f"one trial needs {workers} x {cpus_per_worker} CPU and {workers} x {gpus_per_worker} GPU; "
                         f"the cluster has {cpus:g} CPU and {gpus:g} GPU now (if it autoscales, pass --concurrency N: "
                         "the trials to run at once, and the autoscaler adds the nodes they need)")
    return ResourcePlan(workers, cpus_per_worker, gpus_per_worker, concurrency or fits, fits)
