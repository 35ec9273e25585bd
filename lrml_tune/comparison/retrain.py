"""Train configurations again, one process per core, with progress: how much of a result is training noise.

Every finished run is kept in a ``RunStore``, by configuration, prepared dataset and the lrml code that
trained it, so that a comparison run again, or continued after an interrupt, trains only what it lacks.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import lrml
from lrml.data import data_home, load_dataset, read_manifest
from lrml.train import MONITOR, TrainConfig, Trainer

PROTOCOLS = ("sampled", "full")
METRICS = ("hr@10", "ndcg@10", "mrr")


@functools.cache
def code_fingerprint() -> str:
    """A hash of the lrml package's sources and torch's version: a run is reused only by the code that made it."""
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(Path(lrml.__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


class RunStore:
    """Finished runs' final metrics as JSON files in ``folder``, one per configuration, dataset and code."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @staticmethod
    def key(config: TrainConfig, fingerprint: str) -> dict:
        """What a run is kept by: its whole configuration, the prepared dataset and the code."""
        return {"config": asdict(config), "dataset": fingerprint, "code": code_fingerprint()}

    def path(self, config: TrainConfig, fingerprint: str) -> Path:
        digest = hashlib.sha256(json.dumps(self.key(config, fingerprint), sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"{config.model}-seed{config.seed}-{digest}.json"

    def get(self, config: TrainConfig, fingerprint: str) -> dict | None:
        """The run's final metrics, or None when it was never finished here (or its file cannot be read)."""
        try:
            return json.loads(self.path(config, fingerprint).read_text())["final"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, config: TrainConfig, fingerprint: str, final: dict) -> None:
        """Keep a finished run, written whole (to a temporary name, then renamed) or not at all."""
        path = self.path(config, fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({**self.key(config, fingerprint), "final": final}, indent=2) + "\n")
        partial.replace(path)


def kept_runs() -> RunStore:
    """The store beside the prepared datasets that its runs are keyed by: ``$LRML_DATA_HOME/runs``."""
    return RunStore(data_home() / "runs")


def retrain(configs: list[TrainConfig], dataset_path: str, label: str, store: RunStore | None = None) -> list[dict]:
    """Each configuration's final metrics (``Trainer.fit().final``), in order; one line per finished run. Runs
    ``store`` already holds are not trained again; each new one goes into it as it finishes."""
    if not configs:
        return []
    fingerprint = read_manifest(dataset_path)["fingerprint"]
    finals: list[dict | None] = [store.get(config, fingerprint) if store else None for config in configs]
    missing = [index for index, final in enumerate(finals) if final is None]
    if len(missing) < len(configs):
        print(f"  {label}: {len(configs) - len(missing)}/{len(configs)} already trained, read from {store.folder}",
              flush=True)
    if not missing:
        return finals
    workers = max(1, min(len(missing), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {pool.submit(_train, configs[index], dataset_path): index for index in missing}
        for done, future in enumerate(as_completed(running), start=len(configs) - len(missing) + 1):
            index = running[future]
            finals[index] = future.result()
            config = configs[index]
            if store:
                store.put(config, fingerprint, finals[index])
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
