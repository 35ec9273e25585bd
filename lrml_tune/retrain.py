"""Train configurations again, one process per core, with progress: how much of a result is training noise."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch

from lrml.data import load_dataset
from lrml.train import MONITOR, TrainConfig, Trainer

PROTOCOLS = ("sampled", "full")
METRICS = ("hr@10", "ndcg@10", "mrr")


def retrain(configs: list[TrainConfig], dataset_path: str, label: str) -> list[dict]:
    """Each configuration's final metrics (``Trainer.fit().final``), in order; one line per finished run."""
    if not configs:
        return []
    finals: list[dict | None] = [None] * len(configs)
    workers = max(1, min(len(configs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {pool.submit(_train, config, dataset_path): index for index, config in enumerate(configs)}
        for done, future in enumerate(as_completed(running), start=1):
            index = running[future]
            finals[index] = future.result()
            config = configs[index]
            print(f"  {label}: {done}/{len(configs)} trained ({config.model}, seed {config.seed}: best epoch "
                  f"{finals[index]['best_epoch']}, valid nDCG@10 {finals[index]['valid']['sampled']['ndcg@10']:.4f})",
                  flush=True)
    return finals


def _train(config: TrainConfig, dataset_path: str) -> dict:
    """One training run in a worker process (one thread: the pool runs one per core)."""
    torch.set_num_threads(1)
    return Trainer(config, load_dataset(dataset_path)).fit().final


def spread(finals: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """Mean, sd and values of every metric over runs: ``{"valid"|"test": {protocol: {metric: {...}}}}``."""
    return {part: {protocol: {metric: _spread([final[part][protocol][metric] for final in finals])
                              for metric in METRICS} for protocol in PROTOCOLS} for part in ("valid", "test")}


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


def monitored(runs: dict) -> float:
    """The mean of the metric the searches select on, from ``spread``'s output."""
    part, protocol, metric = MONITOR.split("/")
    return runs[part][protocol][metric]["mean"]
