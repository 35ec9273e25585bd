"""Where a trial's time goes outside its training epochs: a trial trained in its own (reused) Tune
process against the same trial fitted as a one-worker Ray Train run, in one run on one machine.

The search's own code runs each trial (``lrml_tune.sweep.trainable.run_trial``); a Tune callback on the
driver notes when each trial starts, when each epoch's result arrives and when the trial ends, and
each result carries the epoch's own duration. From these:

- start: trial start to the first result, less the first epoch (process start or reuse, dataset
  load, model build; for Ray Train also the controller, worker group and data shard);
- between epochs: result gaps less the epochs (reporting, checkpoint writing);
- stop: last result to the trial's end on the driver (stopping the trainer, its workers and actor);
- idle: a slot's gap from one trial's end to the next trial's start.

    python bench/trial_overhead.py [--trials 8] [--epochs 2] [--dataset ml-latest-small]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import ray
from ray import tune

from lrml.data import load_dataset, prepare
from lrml.train import MONITOR, Trainer, defaults
from lrml_tune.sweep.trainable import DatasetRef, TrialSpec, run_trial


class Timeline(tune.Callback):
    """Driver-side wall-clock times of each trial's start, results (with the epoch's own seconds) and end."""

    def __init__(self):
        self.starts, self.results, self.ends = {}, {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append((time.time(), result["seconds"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ends[trial.trial_id] = time.time()


def run_path(spec: TrialSpec, trials: int, storage: str) -> dict[str, float]:
    """Run ``trials`` identical trials one at a time; mean seconds per trial in each phase."""
    timeline = Timeline()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, spec=spec), spec.trial_resources),
        param_space={"seed": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(metric=MONITOR, mode="max", max_concurrent_trials=1,
                                    reuse_actors=not spec.ray_train),
        run_config=tune.RunConfig(name="ray-train" if spec.ray_train else "in-trial", storage_path=storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=[timeline]))
    wall = time.time()
    tuner.fit()
    wall = time.time() - wall
    phases = {"start": [], "between epochs": [], "stop": [], "epochs": []}
    for trial, start in timeline.starts.items():
        arrivals = timeline.results[trial]
        phases["start"].append(arrivals[0][0] - start - arrivals[0][1])
        phases["between epochs"].append(sum(now - before - seconds for (before, _), (now, seconds)
                                            in zip(arrivals, arrivals[1:])))
        phases["stop"].append(timeline.ends[trial] - arrivals[-1][0])
        phases["epochs"].append(sum(seconds for _, seconds in arrivals))
    order = sorted(timeline.starts, key=timeline.starts.get)
    idle = [timeline.starts[later] - timeline.ends[earlier] for earlier, later in zip(order, order[1:])]
    found = {name: float(np.mean(values)) for name, values in phases.items()}
    found["idle between trials"] = float(np.mean(idle)) if idle else 0.0
    found["wall per trial"] = wall / trials
    return found


def setup_costs(spec: TrialSpec) -> dict[str, float]:
    """What a fresh process pays before its first epoch, outside Ray: loading the dataset, building the trainer."""
    started = time.perf_counter()
    dataset = load_dataset(spec.dataset.path)
    loaded = time.perf_counter()
    Trainer(spec.base, dataset)
    return {"load dataset": loaded - started, "build trainer": time.perf_counter() - loaded}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # as tune/search.py sets it
    dataset = load_dataset(prepare(args.dataset, args.data_dir))
    base = replace(defaults("lrml"), max_epochs=args.epochs, patience=args.epochs)
    ref = DatasetRef(str(dataset.path), args.dataset, args.data_dir, dataset.fingerprint)
    paths = {"in the trial's process (reused)": TrialSpec(base, ref),
             "one-worker Ray Train run": TrialSpec(base, ref, ray_train=True)}
    print(f"{args.dataset}, LRML defaults, {args.epochs} epochs per trial, {args.trials} trials one at a time; "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Ray {ray.__version__}")
    for name, cost in setup_costs(paths["one-worker Ray Train run"]).items():
        print(f"  outside Ray, {name}: {cost:.2f} s")
    ray.init(_node_ip_address="127.0.0.2", num_cpus=2, include_dashboard=True,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}})
    try:
        with tempfile.TemporaryDirectory() as storage:
            found = {}
            for name, spec in paths.items():
                spec = replace(spec, train_storage=f"{storage}/train")
                found[name] = run_path(spec, args.trials, storage)
    finally:
        ray.shutdown()
    phases = list(next(iter(found.values())))
    print(f"\n| seconds per trial | {' | '.join(found)} |\n|---|" + "---:|" * len(found))
    for phase in phases:
        print(f"| {phase} | " + " | ".join(f"{values[phase]:.2f}" for values in found.values()) + " |")
    for name, values in found.items():
        overhead = values["wall per trial"] - values["epochs"]
        print(f"{name}: {values['epochs'] / values['wall per trial']:.0%} of a trial slot's time inside epochs, "
              f"{overhead:.2f} s per trial outside them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
