"""A search's trial: a Ray Tune function trainable that drives ``lrml.train.Trainer``, the adapter that keeps
``lrml`` itself free of Ray.

A one-worker trial trains inside the Tune trial's own process, which Tune reuses from trial to
trial, so a trial starts in well under a second. A trial of several workers (or one asked to) fits
a Ray Train ``TorchTrainer``. Its process first has Ray Data read each worker's block of users
(``lrml.data.Shard``) from ``train.parquet`` into the object store, and each worker takes its own block.
The ``lrml.parallel.Collective`` strategy keeps each worker's user rows its own and exchanges the shared
tables every few steps (gloo on CPU, NCCL on GPU); each worker validates its own users and the sums are
added up, so every worker reports the same numbers the same number of times. Both paths report every
epoch, attach a checkpoint whenever validation improves, and continue from the trial's checkpoint
after a failure.
"""
from __future__ import annotations

import functools
import math
import os
import resource
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import ray.data
import ray.train
import ray.tune
import torch
from ray.data.expressions import col
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from lrml import checkpoint as checkpoints
from lrml.data import Dataset, Shard, load_dataset, prepare, read_manifest
from lrml.fused import compiled_threads
from lrml.parallel import Collective, SingleProcess
from lrml.train import EpochReport, TrainConfig, Trainer, monitor_key
from lrml_tune.sweep.cores import lent_threads

CHECKPOINT_FILE = "model.pt"
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node, its id
# A trial that fits a TorchTrainer only waits on it: no CPU (a fraction would strand a node's CPU),
# a little memory because Ray needs a non-empty request.
WAITING_TRIAL_RESOURCES = {"CPU": 0, "memory": 128 * 2**20}


@dataclass(frozen=True)
class DatasetRef:
    """How any node finds the search's prepared dataset: the driver's folder if it sees it, else prepared there."""

    path: str
    name: str  # to prepare it again on a node that cannot see ``path``
    data_dir: str | None
    fingerprint: str

    def load(self, shard: Shard | None = None, train_blocks: tuple[ray.ObjectRef, ...] | None = None) -> Dataset:
        """The dataset; with ``shard``, only that block of users' training pairs, taken from ``train_blocks``
        (Arrow tables in the object store, ``read_blocks``) when given, else read from ``train.parquet``."""
        if train_blocks is None:
            return _load(self, shard)
        return _checked(self, load_dataset(self.prepared_path(), shard, _pairs_of(ray.get(list(train_blocks)))))

    def prepared_path(self) -> str:
        """The prepared folder on this node, prepared here first if this node lacks it."""
        if Path(self.path, "manifest.json").exists():
            return self.path
        return str(prepare(self.name, self.data_dir, progress=False))


def _pairs_of(tables: list) -> tuple[np.ndarray, np.ndarray]:
    """The user and item columns of Arrow tables (zero-copy views of the object store), each copied once into
    one writable array, as torch needs."""
    pairs = []
    for name in ("user", "item"):
        chunks = [chunk for table in tables for chunk in table.column(name).chunks]
        column = np.empty(sum(len(chunk) for chunk in chunks), np.int32)  # the prepared files' type
        start = 0
        for chunk in chunks:
            column[start:start + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
            start += len(chunk)
        pairs.append(column)
    return pairs[0], pairs[1]


@functools.lru_cache(maxsize=2)
def _load(ref: DatasetRef, shard: Shard | None) -> Dataset:
    """The dataset (or a worker's shard of its training pairs), loaded once per process (Tune reuses a
    trial's process for the next trial)."""
    return _checked(ref, load_dataset(ref.prepared_path(), shard))


def _checked(ref: DatasetRef, dataset: Dataset) -> Dataset:
    if dataset.fingerprint != ref.fingerprint:
        raise RuntimeError(f"dataset at {dataset.path} on this node has fingerprint {dataset.fingerprint}, the search's is "
                           f"{ref.fingerprint}")
    return dataset


def read_blocks(ref: DatasetRef, workers: int) -> list[list[ray.ObjectRef]]:
    """Each of ``workers`` workers' block of users' training pairs (``lrml.data.Shard``), read from
    ``train.parquet`` by Ray Data into the object store as Arrow tables, in the file's order.

    Call it before the workers take their CPUs: Ray Data gets no CPU that Ray Train holds, and a read
    inside a worker of a trial holding every CPU waited forever. The read tasks ask for no CPU and run on
    this node, whose disk has the prepared folder; the filter on the user column is pushed down to the
    scan, which skips other users' row groups.
    """
    path = ref.prepared_path()
    users = read_manifest(path)["counts"]["users"]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # a trial's log is no console
    context.use_datasource_v2 = False  # its file-listing tasks ask for a CPU
    context.execution_options.preserve_order = True  # the file's order, as pyarrow reads it: a repeatable run
    here = {"num_cpus": 0, "label_selector": {NODE_ID_LABEL: ray.get_runtime_context().get_node_id()}}
    pairs = ray.data.read_parquet(str(Path(path) / "train.parquet"), **here).select_columns(["user", "item"], **here)
    blocks = []
    for rank in range(workers):
        first, end = Shard(rank, workers).user_range(users)
        blocks.append(pairs.filter(expr=(col("user") >= first) & (col("user") < end), **here).to_arrow_refs())
    return blocks


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a search shares: the hyperparameters not searched, the dataset, the resources."""

    base: TrainConfig  # each trial replaces the searched fields
    dataset: DatasetRef
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_train: bool = False  # fit a TorchTrainer (always when workers > 1); else train in the trial's process
    train_storage: str | None = None  # where TorchTrainer runs keep their checkpoints
    max_failures: int = 0  # TorchTrainer restarts after a worker fails or its workers could not start
    ray_data_reads: bool = True  # several workers get their pairs through Ray Data; False: each reads with pyarrow
    sync_every: int | None = None  # several workers: steps between exchanges (None: shared memory on one machine; lrml.parallel)
    core_ledger: str | None = None  # a one-worker trial: the CoreLedger that lends it idle cores (None: its own CPUs)

    def __post_init__(self):
        if self.workers > 1 and not self.ray_train:
            raise ValueError(f"{self.workers} workers per trial need ray_train=True")

    @property
    def threads(self) -> int:
        return max(1, math.floor(self.cpus_per_worker))

    @property
    def trial_resources(self) -> dict[str, float]:
        """What Tune reserves for the trial itself: the worker's share when it trains in place."""
        if self.ray_train:
            return WAITING_TRIAL_RESOURCES
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    def device(self) -> torch.device:
        return torch.device("cuda" if self.gpus_per_worker and torch.cuda.is_available() else "cpu")


def run_trial(searched: dict, spec: TrialSpec) -> None:
    """Tune function trainable: train ``spec.base`` with the searched hyperparameters replaced."""
    config = replace(spec.base, **searched)
    if spec.ray_train:
        _fit_torch_trainer(config, spec)
    else:
        _train_here(config, spec)


def _train_here(config: TrainConfig, spec: TrialSpec) -> None:
    """Train in the trial's own process; after each epoch, take the threads the search's ledger lends, if any."""
    torch.set_num_threads(spec.threads)
    dataset = spec.dataset.load()
    trainer = Trainer(config, dataset, device=spec.device())
    trial_id = ray.tune.get_context().get_trial_id()
    where = _announce(trial_id, 0, 1, len(dataset.train_users), "pyarrow")
    report = _reporter(ray.tune.report, ray.tune.Checkpoint, where, rank=0)

    def each_epoch(epoch: EpochReport) -> None:
        report(epoch)
        if spec.core_ledger:
            torch.set_num_threads(lent_threads(spec.core_ledger, trial_id, spec.threads))

    trainer.fit(callback=each_epoch, final_eval=False,
                resume=_read_checkpoint(ray.tune.get_checkpoint(), dataset.fingerprint))


def _fit_torch_trainer(config: TrainConfig, spec: TrialSpec) -> None:
    """Fit a TorchTrainer of ``spec.workers`` workers; ``TuneReportCallback`` forwards rank 0's reports."""
    trial_id = ray.tune.get_context().get_trial_id()
    blocks = read_blocks(spec.dataset, spec.workers) if spec.workers > 1 and spec.ray_data_reads else None
    TorchTrainer(
        functools.partial(_worker_loop, config, spec, trial_id, blocks),
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": spec.cpus_per_worker,
                                                           **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {})}),
        run_config=RunConfig(name=trial_id, storage_path=spec.train_storage, callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_order="max",
                                                                checkpoint_score_attribute=monitor_key(config.monitor)),
                             # bounded: workers that cannot start fail the trial after max_failures more tries
                             failure_config=FailureConfig(max_failures=spec.max_failures,
                                                          controller_failure_limit=spec.max_failures))).fit()


def _worker_loop(config: TrainConfig, spec: TrialSpec, trial_id: str, blocks: list | None) -> None:
    """One Ray Train worker: its block of users' training pairs (from ``blocks``, read by Ray Data, when given),
    the same model as every other worker."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(spec.threads)
    device = ray.train.torch.get_device() if spec.device().type == "cuda" else torch.device("cpu")
    dataset = spec.dataset.load(Shard(rank, world) if world > 1 else None, None if blocks is None else tuple(blocks[rank]))
    trainer = Trainer(config, dataset, Collective(spec.sync_every) if world > 1 else SingleProcess(), device)
    where = _announce(trial_id, rank, world, len(dataset.train_users), "pyarrow" if blocks is None else "ray.data")
    if world > 1:
        where["exchange"] = trainer.parallel.exchange  # as chosen for this model, batch and placement
    trainer.fit(callback=_reporter(ray.train.report, ray.train.Checkpoint, where, rank), final_eval=False,
                resume=_read_checkpoint(ray.train.get_checkpoint(), dataset.fingerprint))


def _announce(trial_id: str, rank: int, world: int, pairs: int, reader: str) -> dict:
    """Say where this worker trains, on how much data and what read it; the same facts go with every report."""
    node = node_ip()
    print(f"run {trial_id}: worker rank {rank} of {world} (pid {os.getpid()}, node {node}): {pairs} training pairs "
          f"read by {reader}", flush=True)
    return {"workers": world, "worker_pairs": pairs, "train_node_ip": node, "train_reader": reader}


def node_ip() -> str:
    """The address of the Ray node this process runs on, as the cluster registered it."""
    node_id = ray.get_runtime_context().get_node_id()
    return next(node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == node_id)


def _read_checkpoint(found, fingerprint: str) -> dict | None:
    """The checkpoint a restarted trial continues from (Tune or Ray Train hands back the last one reported)."""
    if found is None:
        return None
    with found.as_directory() as folder:
        return checkpoints.read(Path(folder) / CHECKPOINT_FILE, expected_fingerprint=fingerprint)


def _reporter(report: Callable, checkpoint_class, where: dict, rank: int) -> Callable[[EpochReport], None]:
    """A fit callback that reports every epoch; rank 0 attaches a checkpoint when validation improved.

    ``last_epoch`` tells the searcher that the trial ended by itself (max epochs or patience), not
    because the scheduler stopped it; ``threads`` the threads rank 0's compiled passes ran on; ``peak_rss_mb`` is the
    largest worker process's peak resident memory so far (a reused process: over every trial it ran);
    ``cpu_seconds`` the CPU time the workers' processes took since the last report (the first: since the trial
    started), summed over workers, for the search's CPU use.
    """
    cpu_before = _process_cpu_seconds()

    def report_epoch(epoch: EpochReport) -> None:
        nonlocal cpu_before
        cpu_now = _process_cpu_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak_kb = epoch.trainer.parallel.agree_max(usage.ru_maxrss)
        [cpu_seconds] = epoch.trainer.parallel.agree_sum([cpu_now - cpu_before])
        cpu_before = cpu_now
        metrics = {**epoch.metrics, **where, "last_epoch": epoch.last, "threads": compiled_threads(),
                   "peak_rss_mb": peak_kb / 1024, "cpu_seconds": cpu_seconds}
        if not (epoch.improved and rank == 0):
            report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            checkpoints.save(epoch.trainer.checkpoint(epoch.epoch, epoch.metrics), Path(folder) / CHECKPOINT_FILE)
            report(metrics, checkpoint=checkpoint_class.from_directory(folder))
    return report_epoch


def _process_cpu_seconds() -> float:
    """User and system CPU time of this process, every thread of it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
