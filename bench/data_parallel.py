"""Does adding workers pay? The search's own trial (LRML's defaults, no early stopping) with one worker of one
CPU against a Ray Train trial of several workers of one CPU each, seed by seed, back to back in one run: each
epoch's time (training and validation) and validation nDCG@10.

A trial of one worker trains in its Tune process, as the search runs it; one of several workers is a
``TorchTrainer`` whose workers each train on their block of users, sharing the item tables in the machine's
memory, or, with ``WORKERS:SYNC_EVERY``, exchanging them every ``SYNC_EVERY`` steps (``lrml.parallel``).
Steady epochs are all but the first (which compiles the numba passes). Writes ``bench/data_parallel.csv`` (every
epoch) and the tables between the markers in ``bench/README.md``: the speed-up of each setting over one worker,
and the validation curves over seeds.

    python bench/data_parallel.py                      # ml-1m (8 epochs) and ml-20m (3) shapes, 3 seeds; ml-100k's curves
    python bench/data_parallel.py --datasets synthetic-ml-1m:3 --seeds 1 --settings 1 2:1 2:32
    python bench/data_parallel.py --address 127.0.0.2:6379 --settings 2 4 --no-write   # a cluster started before
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import ray
from train_reads import fit_trial

from lrml.data import prepare, read_manifest
from lrml.train import MONITOR, defaults
from lrml_tune.comparison.markdown import write_section
from lrml_tune.sweep.settings import SearchSettings
from lrml_tune.sweep.trainable import DatasetRef, TrialSpec

BENCH = Path(__file__).resolve().parent
DATA_DIRS = {"ml-100k": str(BENCH.parents[1] / "shared" / "data" / "ml-100k")}  # read in place, never copied
START, END = "<!-- data_parallel: start -->", "<!-- data_parallel: end -->"


def parse_dataset(text: str, epochs: int) -> tuple[str, int]:
    """``NAME`` or ``NAME:EPOCHS``."""
    name, _, count = text.partition(":")
    return name, int(count) if count else epochs


def parse_setting(text: str) -> tuple[int, int | None]:
    """``WORKERS`` or ``WORKERS:SYNC_EVERY`` (default: the search's: shared memory on one machine)."""
    workers, _, every = text.partition(":")
    return int(workers), int(every) if every else SearchSettings.sync_every


def run(args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for dataset, epochs in (parse_dataset(text, args.epochs) for text in args.datasets):
            path = prepare(dataset, DATA_DIRS.get(dataset))
            manifest = read_manifest(path)
            ref = DatasetRef(str(path), dataset, DATA_DIRS.get(dataset), manifest["fingerprint"])
            for seed in range(1, args.seeds + 1):
                base = replace(defaults("lrml"), max_epochs=epochs, patience=epochs, seed=seed)
                for workers, every in map(parse_setting, args.settings):
                    spec = TrialSpec(base, ref, workers=workers, ray_train=workers > 1,
                                     train_storage=f"{storage}/train", sync_every=every)
                    name = f"{dataset}-w{workers}-k{every or 'auto'}-s{seed}"
                    for epoch in fit_trial(spec, storage, name)[1]:
                        rows.append({"dataset": dataset, "pairs": manifest["counts"]["train"], "seed": seed,
                                     "workers": workers, "exchange": epoch["exchange"] if workers > 1 else None,
                                     "epoch": epoch["epoch"], "seconds": epoch["seconds"],
                                     "validation_seconds": epoch["validation_seconds"],
                                     "exchange_seconds": epoch["exchange_seconds"],
                                     "ndcg": epoch[MONITOR], "loss": epoch["loss"]})
                    print(f"{name}: epochs {[round(r['seconds'], 1) for r in rows[-epochs:]]} s, valid nDCG@10 "
                          f"{rows[-1]['ndcg']:.4f}", flush=True)
    return pd.DataFrame(rows)


def tables(found: pd.DataFrame, args: argparse.Namespace) -> list[str]:
    """The speed-up table (steady epochs) and the curves table (validation nDCG@10 per epoch, mean ± sd)."""
    found = found.assign(setting=[f"{w} worker(s)" if w == 1 else f"{w} workers, {exchange}"
                                  for w, exchange in zip(found.workers, found.exchange)])
    lines = [START, "", f"`python bench/data_parallel.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
             f"({os.cpu_count()} CPUs, one run; a local Ray started as the search starts it, dashboard included; "
             "workers of one CPU each; LRML's defaults, batch "
             f"{defaults('lrml').batch_size}, no early "
             "stopping; steady epochs: all but the first; pairs/s: the training pairs over an epoch's seconds, "
             "validation included).", "",
             "| shape | setting | steady epoch s (mean over seeds) | of which validation s | of which exchanging s "
             "| pairs/s | speed-up | speed-up, seed by seed |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    steady = found[found.epoch > 1]
    for dataset, group in steady.groupby("dataset", sort=False):
        per_setting = group.groupby("setting", sort=False)[["seconds", "validation_seconds", "exchange_seconds"]].mean()
        per_seed = group.groupby(["setting", "seed"], sort=False)["seconds"].mean()
        one = per_setting["seconds"].get("1 worker(s)")
        for setting, row in per_setting.iterrows():
            seeds = (" / ".join(f"{per_seed['1 worker(s)'][seed] / seconds:.2f}x"
                                for seed, seconds in per_seed[setting].items()) if one else "n/a")
            lines.append(f"| {dataset} | {setting} | {row.seconds:.2f} | {row.validation_seconds:.2f} | "
                         f"{row.exchange_seconds:.2f} | "
                         f"{group.pairs.iloc[0] / row.seconds:,.0f} | {f'{one / row.seconds:.2f}x' if one else 'n/a'} "
                         f"| {seeds} |")
    for dataset, group in found.groupby("dataset", sort=False):
        shown = sorted({1, 2, 3, 4, 5, 10, 15, 20, int(group.epoch.max())} & set(group.epoch))
        lines += ["", f"{dataset}: validation nDCG@10 after each epoch, mean ± sd over the seeds:", "",
                  "| setting | " + " | ".join(f"epoch {e}" for e in shown) + " |", "|---|" + "---:|" * len(shown)]
        for setting, runs in group.groupby("setting", sort=False):
            curve = runs.groupby("epoch")["ndcg"].agg(["mean", "std"]).fillna(0.0).loc[shown]
            lines.append(f"| {setting} | " + " | ".join(f"{r['mean']:.4f} ± {r['std']:.4f}" for _, r in curve.iterrows())
                         + " |")
    return lines + ["", END]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k:20", "synthetic-ml-1m:8", "synthetic-ml-20m:3"],
                        help="NAME[:EPOCHS] each (ml-100k is read from the shared data folder)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 1..N")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a dataset that names none")
    parser.add_argument("--settings", nargs="+", default=["1", "2"],
                        help="WORKERS[:SYNC_EVERY] per trial (default: one worker, and two as the search runs them)")
    parser.add_argument("--address", help="a Ray cluster to run on (default: a local Ray of this machine's 2 CPUs)")
    parser.add_argument("--no-write", action="store_true", help="print, but leave bench/README.md and the CSV alone")
    args = parser.parse_args()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        # as the search starts its local Ray: the dashboard's processes share the cores with the workers
        ray.init(_node_ip_address="127.0.0.2", num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        found = run(args)
    finally:
        ray.shutdown()
    lines = tables(found, args)
    print("\n".join(lines))
    if not args.no_write:
        found.to_csv(BENCH / "data_parallel.csv", index=False, float_format="%.5g")
        write_section(BENCH / "README.md", START, END, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
