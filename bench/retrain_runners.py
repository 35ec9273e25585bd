"""Where best.py's retrains run: processes of this machine started for each batch of runs (as before), kept
for every batch (best.py's default now), or Ray tasks (``--address``); the same runs back to back in one run on
one machine, with the same numbers from all three.

The runs come in batches as best.py's do (a search's candidates times seeds, then its defaults' seeds):
LRML's defaults with a seed each, through ``lrml_tune.comparison.retrain.retrain`` with no run store.
Ray's runs go to a local Ray of this machine's cores, started before the clock starts (as
``best.py --address`` joins a running cluster). Writes the table between the markers in
``bench/README.md``.

    python bench/retrain_runners.py [--batches 6 2] [--epochs 10] [--dataset ml-100k]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import ray

from lrml.data import prepare, read_manifest
from lrml.train import defaults
from lrml_tune.comparison.cluster_runs import RayTasks
from lrml_tune.comparison.markdown import write_section
from lrml_tune.comparison.retrain import LocalProcesses, retrain
from lrml_tune.sweep.local_ray import LOCAL_NODE_IP
from lrml_tune.sweep.trainable import DatasetRef

BENCH = Path(__file__).resolve().parent
DATA_DIRS = {"ml-100k": str(BENCH.parents[1] / "shared" / "data" / "ml-100k")}  # read in place, never copied
START, END = "<!-- retrain_runners: start -->", "<!-- retrain_runners: end -->"


def without_time(final: dict) -> dict:
    return {key: value for key, value in final.items() if key != "seconds"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[6, 2], help="runs in each batch, in turn")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each run (no early stop before)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--no-write", action="store_true", help="print, but leave bench/README.md alone")
    args = parser.parse_args()
    data_dir = DATA_DIRS.get(args.dataset)
    path = str(prepare(args.dataset, data_dir))
    seeds = iter(range(1, sum(args.batches) + 1))
    batches = [[replace(defaults("lrml"), max_epochs=args.epochs, patience=args.epochs, seed=next(seeds))
                for _ in range(size)] for size in args.batches]

    def timed(runner_for_batch) -> tuple[float, list[dict]]:
        started, finals = time.perf_counter(), []
        for number, batch in enumerate(batches):
            finals += retrain(batch, path, f"batch {number + 1}", runner=runner_for_batch())
        return time.perf_counter() - started, finals

    per_batch_seconds, per_batch = timed(lambda: None)  # retrain's own pool, started and ended per call
    with LocalProcesses(path) as processes:
        kept_seconds, kept = timed(lambda: processes)
    ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)
    try:
        tasks = RayTasks(DatasetRef(path, args.dataset, data_dir, read_manifest(path)["fingerprint"]))
        tasks_seconds, on_ray = timed(lambda: tasks)
    finally:
        ray.shutdown()
    same = ([without_time(final) for final in per_batch] == [without_time(final) for final in kept]
            == [without_time(final) for final in on_ray])

    runs = sum(args.batches)
    lines = [START, "", f"`python bench/retrain_runners.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
             f"({os.cpu_count()} CPUs, one run each; {runs} runs of LRML's defaults on {args.dataset} in batches of "
             f"{', '.join(map(str, args.batches))}, {args.epochs} epochs each, final metrics in both protocols; the "
             f"same metrics from all three: {same}).", "",
             "| runner | seconds | against processes started for each batch |", "|---|---:|---:|",
             f"| this machine's processes, started for each batch | {per_batch_seconds:.1f} | 1.00x |",
             f"| this machine's processes, kept for every batch (best.py's default) | {kept_seconds:.1f} | "
             f"{per_batch_seconds / kept_seconds:.2f}x |",
             f"| Ray tasks, a local Ray of {os.cpu_count()} CPUs (best.py --address) | {tasks_seconds:.1f} | "
             f"{per_batch_seconds / tasks_seconds:.2f}x |", "", END]
    print("\n".join(lines))
    if not args.no_write:
        write_section(BENCH / "README.md", START, END, lines)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
