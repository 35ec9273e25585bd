"""Trial concurrency, computed from what the Ray cluster has.

A trial costs exactly ``workers * cpus_per_worker`` CPUs (and GPUs likewise): a one-worker trial
trains in its own process and reserves that; a trial of several workers reserves nothing for the
process that waits on its TorchTrainer (``lrml_tune.sweep.trainable.TrialSpec.trial_resources``), since even
0.01 CPU would leave a 1-CPU node unable to host a 1-CPU worker. A cluster that autoscales from
zero workers holds no trial at the start; there the user says how many trials to run at once and
the autoscaler adds nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lrml.errors import UserError


@dataclass(frozen=True)
class ResourcePlan:
    """How many trials run at once, and how many the cluster holds now."""

    concurrency: int
    fits_now: int  # trials the cluster holds as it is; fewer than ``concurrency`` when it must scale up


def plan_resources(cluster: dict[str, float], workers: int, cpus_per_worker: float,
                   gpus_per_worker: float, concurrency: int | None = None) -> ResourcePlan:
    """Trials at once: ``concurrency`` when given (an autoscaling cluster grows to it), otherwise as
    many as the cluster holds now, which must be at least one. The counts come from ``SearchSettings``,
    which has checked them."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    fits = math.floor(cpus / (workers * cpus_per_worker) + 1e-9)
    if gpus_per_worker:
        fits = min(fits, math.floor(gpus / (workers * gpus_per_worker) + 1e-9))
    if concurrency is None and fits < 1:
        raise UserError(f"one trial needs {workers} x {cpus_per_worker} CPU and {workers} x {gpus_per_worker} GPU; "
                         f"the cluster has {cpus:g} CPU and {gpus:g} GPU now (if it autoscales, pass --concurrency N: "
                         "the trials to run at once, and the autoscaler adds the nodes they need)")
    return ResourcePlan(concurrency or fits, fits)
