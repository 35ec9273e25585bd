"""Ranking a whole test split in one process against Ray Data batch inference (what ``tune/best.py --ray-data``
does), back to back in one run: seconds, peak memory, and that the ranks agree.

The model is an LRML of the dataset's shape with random weights (speed does not depend on what it learnt);
the dataset is prepared like a release (``synthetic-<shape>``: generated once, kept in the data home).
Ray Data runs on a local Ray of this machine's CPUs, one actor a CPU; peak memory is the driver's for the
single process and the largest resident set an actor reached (polled) for Ray Data.

    python bench/batch_inference.py [--dataset synthetic-ml-20m] [--protocols full sampled]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

import numpy as np
import psutil
import torch

from lrml.data import load_dataset, prepare
from lrml.evaluate import PROTOCOLS, Evaluator
from lrml.model import LRML, LRMLConfig
from lrml_tune.comparison.ray_data_ranking import evaluation_cluster, ray_data_ranks


class ActorMemory(threading.Thread):
    """Polls this machine's Ray Data actors (``ray::MapWorker`` processes) and keeps the largest resident set."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_gb, self.running = 0.0, True

    def run(self) -> None:
        while self.running:
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                if any("MapWorker" in part for part in process.info["cmdline"] or []) and process.info["memory_info"]:
                    self.peak_gb = max(self.peak_gb, process.info["memory_info"].rss / 2**30)
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-ml-20m")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--memory", type=int, default=20)
    args = parser.parse_args()
    path = str(prepare(args.dataset))
    dataset = load_dataset(path)
    torch.manual_seed(0)
    model = LRML(LRMLConfig(dataset.num_users, dataset.num_items, args.dim, args.memory)).eval()
    with torch.no_grad():
        for table in (model.user_embedding.weight, model.item_embedding.weight):
            table.normal_(0.0, 0.1)
    protocols = tuple(args.protocols)
    print(f"{args.dataset}: {dataset.num_users:,} users, {dataset.num_items:,} items; {os.cpu_count()} CPUs; "
          f"protocols {', '.join(protocols)}", flush=True)

    started = time.perf_counter()
    alone = Evaluator(dataset).ranks(model, "test", protocols)
    alone_seconds = time.perf_counter() - started
    alone_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del dataset

    with evaluation_cluster("local"):
        memory = ActorMemory()
        memory.start()
        started = time.perf_counter()
        spread = ray_data_ranks(model, path, "test", protocols)
        spread_seconds = time.perf_counter() - started
        memory.running = False
    same = all(torch.equal(alone[protocol], spread[protocol]) for protocol in protocols)
    print("| evaluation | seconds | peak memory (GB) |\n|---|---:|---:|")
    print(f"| one process ({torch.get_num_threads()} threads) | {alone_seconds:,.0f} | {alone_peak:.1f} (the process) |")
    print(f"| Ray Data, {os.cpu_count()} actors | {spread_seconds:,.0f} | {memory.peak_gb:.1f} (the largest actor) |")
    print(f"ranks equal in every protocol: {same}; users with different ranks: "
          f"{sum(int(np.sum(alone[p].numpy() != spread[p].numpy())) for p in protocols)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
