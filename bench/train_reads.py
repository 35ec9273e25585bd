"""A two-worker trial's training pairs read through Ray Data (the search's path: the trial's process reads each
worker's block into the object store) against each worker reading its block with pyarrow, back to back in one
run: the trial's wall time, each epoch's time and the largest worker's peak memory.

Both are the search's own trial (``lrml_tune.sweep.trainable.run_trial``, a Ray Train ``TorchTrainer`` of two workers of
one CPU each), differing only in ``TrialSpec.ray_data_reads``.

    python bench/train_reads.py [--dataset synthetic-ml-20m] [--epochs 1]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace

import ray
from ray import tune

from lrml.data import prepare, read_manifest
from lrml.train import defaults
from lrml_tune.sweep.trainable import DatasetRef, TrialSpec, run_trial


def fit_trial(spec: TrialSpec, storage: str, name: str) -> tuple[float, list[dict]]:
    """One trial through Tune, as the search runs it: its wall time and its reported epochs."""
    start = time.perf_counter()
    results = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, spec=spec), spec.trial_resources),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0)).fit()
    if results.num_errors:
        raise SystemExit(f"{name}: {results.errors[0]}")
    return time.perf_counter() - start, results[0].metrics_dataframe.to_dict("records")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-ml-20m")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    path = prepare(args.dataset)
    manifest = read_manifest(path)
    ref = DatasetRef(str(path), args.dataset, None, manifest["fingerprint"])
    base = replace(defaults("lrml"), max_epochs=args.epochs, patience=args.epochs)
    print(f"{args.dataset}: {manifest['counts']['users']:,} users, {manifest['counts']['train']:,} training pairs; "
          f"2 workers x 1 CPU, LRML defaults, {args.epochs} epoch(s); {platform.processor() or platform.machine()}")
    print(f"{'reader':8} {'trial s':>8} {'epoch s':>8} {'largest worker peak MB':>23} {'pairs per worker':>17}")
    ray.init(_node_ip_address="127.0.0.2", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            for ray_data in (False, True):
                spec = TrialSpec(base, ref, workers=2, cpus_per_worker=1, ray_train=True,
                                 train_storage=f"{storage}/train", ray_data_reads=ray_data)
                wall, epochs = fit_trial(spec, storage, "ray-data" if ray_data else "pyarrow")
                last = epochs[-1]
                print(f"{last['train_reader']:8} {wall:8.1f} {sum(e['seconds'] for e in epochs) / len(epochs):8.1f} "
                      f"{last['peak_rss_mb']:23,.0f} {last['worker_pairs']:17,}", flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
