"""Idle cores lent to a search's last trials. Once every trial has started, a trial that ends leaves its CPUs idle
until the search ends (the tail); the trials still running then share their node's CPUs, each training on that
many threads from its next epoch. The driver decides (``CoreLender``, a Tune callback) and a named actor holds
the decision (``CoreLedger``), which each one-worker trial reads after every epoch (``lent_threads``)."""
from __future__ import annotations

import functools
import math
import os
from collections import Counter

import ray
from ray import tune
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)
class CoreLedger:
    """The threads lent to each running trial, by trial id; a trial not named keeps its own."""

    def __init__(self):
        self.threads: dict[str, int] = {}

    def lend(self, threads: dict[str, int]) -> None:
        self.threads = threads

    def threads_of(self, trial_id: str) -> int | None:
        return self.threads.get(trial_id)


def shares(running: dict[str, str | None], node_cpus: dict[str, float], own: int) -> dict[str, int]:
    """Threads for each running trial (trial id -> its node's address, None before its first epoch) when no trial
    is left to start: its node's CPUs split evenly between the trials running there, and never fewer than its
    ``own``. Nothing is lent while a trial's node is unknown: it holds CPUs on some node."""
    if None in running.values():
        return {}
    on_node = Counter(running.values())
    lent = {trial: math.floor(node_cpus.get(node, 0.0) / on_node[node]) for trial, node in running.items()}
    return {trial: threads for trial, threads in lent.items() if threads > own}


class CoreLender(tune.Callback):
    """At each step of Tune's loop: once ``num_samples`` trials exist and none waits to start, the running trials'
    shares of their nodes' CPUs (``shares``) go to the ledger; before that, none."""

    def __init__(self, ledger_name: str, num_samples: int, own: int):
        self.ledger_name, self.num_samples, self.own = ledger_name, num_samples, own
        self.ledger, self.lent, self.node_cpus = None, {}, {}

    def __getstate__(self) -> dict:
        """Tune saves its callbacks with the search: the actor and what was lent belong to one run of it."""
        return {**self.__dict__, "ledger": None, "lent": {}, "node_cpus": {}}

    def setup(self, **info) -> None:
        """The ledger lives on the driver's node: on any other it would die with that node, and every trial with it."""
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.ledger = CoreLedger.options(name=self.ledger_name, get_if_exists=True, scheduling_strategy=here).remote()

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if len(trials) < self.num_samples or any(trial.status == "PENDING" for trial in trials):
            lent = {}
        else:
            running = {trial.trial_id: (trial.last_result or {}).get("train_node_ip") for trial in trials
                       if trial.status == "RUNNING"}
            if not set(running.values()) <= set(self.node_cpus):
                self.node_cpus = {node["NodeManagerAddress"]: node["Resources"].get("CPU", 0.0)
                                  for node in ray.nodes() if node["Alive"]}
            lent = shares(running, self.node_cpus, self.own)
        if lent != self.lent:
            self.ledger.lend.remote(lent)
            self.lent = lent


def lent_threads(ledger_name: str, trial_id: str, own: int) -> int:
    """The threads this trial trains its next epoch on: what the ledger lends it, at most the cores this process
    may run on, else its ``own`` (also where there is no ledger: a search begun by a version without one, or the
    ledger is gone)."""
    ledger = _ledger(ledger_name)
    try:
        lent = ray.get(ledger.threads_of.remote(trial_id)) if ledger else None
    except RayActorError:  # the driver's node went down: the search will not outlive it, the trial keeps going
        lent = None
    return min(lent, _usable_cores()) if lent else own


@functools.lru_cache(maxsize=1)
def _ledger(name: str) -> ray.actor.ActorHandle | None:
    """The ledger, looked up once per trial process (a process serves one search: Tune reuses it for the next
    trial)."""
    try:
        return ray.get_actor(name)
    except ValueError:  # Ray's answer for a name no actor has
        return None


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
