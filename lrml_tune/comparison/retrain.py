"""Train configurations again, with progress: how much of a result is training noise. The runs go to a
runner: one process per core of this machine (``LocalProcesses``), or Ray tasks on a cluster
(``lrml_tune.comparison.cluster_runs.RayTasks``).

Every finished run is kept in a ``RunStore``, by configuration, prepared dataset and the lrml code that
trained it, so that a comparison run again, or continued after an interrupt, trains only what it lacks.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

import lrml
from lrml.data import data_home, load_dataset, read_manifest
from lrml.evaluate import PROTOCOLS
from lrml.train import TrainConfig, Trainer

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


class Runner(Protocol):
    """Where runs train: ``submit`` starts one and gives its future ``(final metrics, node or None)``."""

    def submit(self, config: TrainConfig) -> Future: ...


class LocalProcesses:
    """One process per core of this machine, started as runs need them and kept for every later run; a context
    manager that ends them. Each is started with one OpenMP thread, as Ray starts a worker of one CPU: with the
    default of a thread per core in every process, the runs took about twice as long on two cores
    (``bench/retrain_runners.py``)."""

    def __init__(self, dataset_path: str):
        self.dataset_path = dataset_path
        self.pool = ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, config: TrainConfig) -> Future:
        with _environment(OMP_NUM_THREADS="1"):  # read by the processes submit starts (lrml's numba pool too)
            return self.pool.submit(_train_here, config, self.dataset_path)

    def __enter__(self) -> "LocalProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def _environment(**values: str):
    """``values`` in this process's environment for the block, what was there before put back after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def retrain(configs: list[TrainConfig], dataset_path: str, label: str, store: RunStore | None = None,
            runner: Runner | None = None) -> list[dict]:
    """Each configuration's final metrics (``Trainer.fit().final``), in order; one line per finished run. Runs
    ``store`` already holds are not trained again; each new one goes into it as it finishes. The runs train on
    ``runner`` (by default, processes of this machine for this call alone)."""
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
    with LocalProcesses(dataset_path) if runner is None else contextlib.nullcontext(runner) as running_on:
        running = {running_on.submit(configs[index]): index for index in missing}
        for done, future in enumerate(as_completed(running), start=len(configs) - len(missing) + 1):
            index = running[future]
            finals[index], node = future.result()
            config = configs[index]
            if store:
                store.put(config, fingerprint, finals[index])
            print(f"  {label}: {done}/{len(configs)} trained{f' on {node}' if node else ''} ({config.model}, seed "
                  f"{config.seed}: best epoch {finals[index]['best_epoch']}, valid nDCG@10 "
                  f"{finals[index]['valid']['sampled']['ndcg@10']:.4f})", flush=True)
    return finals


def train(config: TrainConfig, dataset_path: str) -> dict:
    """One training run on one thread (a runner runs one per core): its final metrics."""
    torch.set_num_threads(1)
    return Trainer(config, load_dataset(dataset_path)).fit().final


def _train_here(config: TrainConfig, dataset_path: str) -> tuple[dict, None]:
    return train(config, dataset_path), None


def spread(finals: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """Mean, sd and values of every metric over runs: ``{"valid"|"test": {protocol: {metric: {...}}}}``."""
    return {part: {protocol: {metric: _spread([final[part][protocol][metric] for final in finals])
                              for metric in METRICS} for protocol in PROTOCOLS} for part in ("valid", "test")}


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


def monitored(runs: dict, protocol: str) -> float:
    """The mean validation nDCG@10 in ``protocol`` (the one the searches selected on), from ``spread``'s output."""
    return runs["valid"][protocol]["ndcg@10"]["mean"]
