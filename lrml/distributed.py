"""The one place lrml meets Ray: a Tune trial that fits a TorchTrainer, and its worker loop
that drives ``lrml.train.Trainer``.

Each worker trains on its Ray Data shard of ``train.parquet``, sums gradients over the workers
with ``lrml.parallel.GradientSync`` (gloo on CPU, NCCL on GPU; sparse embedding gradients stay
sparse), samples negatives from its own seed, and validates on all
validation users with rank 0's numbers broadcast, so every worker reports the same metrics the
same number of times and the numbers do not depend on the worker count. Rank 0 writes the
checkpoint whenever validation improves.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray.train
import ray.tune
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from lrml import checkpoint as checkpoints
from lrml.data import Dataset, load_dataset, prepare
from lrml.parallel import GradientSync
from lrml.train import MONITOR, EpochReport, Trainer, TrainConfig

CHECKPOINT_FILE = "model.pt"


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point; ``loop_config`` holds ``train`` (TrainConfig fields), the dataset
    (``dataset_path``, ``dataset``, ``data_dir``, ``fingerprint``), ``threads`` and ``use_gpu``."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config.get("threads", 1))
    use_gpu = torch.cuda.is_available() and loop_config.get("use_gpu", False)
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    dataset = _local_dataset(loop_config)
    config = TrainConfig(**loop_config["train"])
    # the global batch stays batch_size whatever the worker count
    worker_config = replace(config, batch_size=max(1, math.ceil(config.batch_size / world)))
    trainer = Trainer(worker_config, dataset, rank=rank, device=device)
    if world > 1:
        trainer.sync_gradients = GradientSync(trainer.model)
    shard = ray.train.get_dataset_shard("train")
    steps = math.ceil(len(dataset.train_users) / world / worker_config.batch_size)

    # reported with the metrics, so a run shows where it trained and each worker's share of the data
    evidence = {"workers": world, "worker_pairs": 0, "train_node_ip": _node_ip()}

    def shard_positives() -> tuple[np.ndarray, np.ndarray]:
        parts = list(shard.iter_batches(batch_size=65536, batch_format="numpy"))
        users, items = np.concatenate([p["user"] for p in parts]), np.concatenate([p["item"] for p in parts])
        if evidence["worker_pairs"] == 0:
            print(f"run {context.get_experiment_name()}: worker rank {rank} of {world} (pid {os.getpid()}, "
                  f"node {evidence['train_node_ip']}): "
                  f"{len(users)} training pairs, {steps} steps of {worker_config.batch_size} per epoch", flush=True)
        evidence["worker_pairs"] = len(users)
        return users, items

    if world > 1:
        trainer.validate = _broadcast_from_rank_zero(trainer.validate, device)
    trainer.fit(callback=lambda report: _report(report, evidence), positives=shard_positives,
                num_batches=steps if world > 1 else None, final_eval=False,
                resume=_last_checkpoint(dataset.fingerprint))


def _node_ip() -> str:
    """The address of the Ray node this worker runs on (as the cluster registered it)."""
    node_id = ray.get_runtime_context().get_node_id()
    return next(node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == node_id)


def _local_dataset(loop_config: dict) -> Dataset:
    """The prepared dataset on this node: the driver's folder if visible here, else prepared again here."""
    path = loop_config["dataset_path"]
    if not Path(path, "manifest.json").exists():
        path = str(prepare(loop_config["dataset"], loop_config.get("data_dir"), progress=False))
    dataset = load_dataset(path)
    if dataset.fingerprint != loop_config["fingerprint"]:
        raise RuntimeError(f"dataset at {path} on this node has fingerprint {dataset.fingerprint}, the search's is "
                           f"{loop_config['fingerprint']}")
    return dataset


def _last_checkpoint(fingerprint: str) -> dict | None:
    """The checkpoint a restarted trial continues from (Ray Train hands back the last one reported)."""
    found = ray.train.get_checkpoint()
    if found is None:
        return None
    with found.as_directory() as folder:
        return checkpoints.read(Path(folder) / CHECKPOINT_FILE, expected_fingerprint=fingerprint)


def _broadcast_from_rank_zero(validate, device):
    """Wrap ``validate`` so every worker returns rank 0's metrics (and so makes the same stop decision)."""
    def validate_everywhere() -> dict[str, float]:
        metrics = validate()
        values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
        dist.broadcast(values, src=0)
        return dict(zip(metrics, values.tolist()))
    return validate_everywhere


def _report(report: EpochReport, evidence: dict) -> None:
    """Report every epoch from every worker; rank 0 attaches a checkpoint when validation improved."""
    metrics = {**report.metrics, **evidence}
    if report.improved and ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as folder:
            checkpoints.save(report.trainer.checkpoint(report.epoch, report.metrics), Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics)


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a search shares: the dataset, the fixed hyperparameters and the resources."""

    dataset_path: str
    dataset: str  # to prepare the dataset again on a node that cannot see dataset_path
    data_dir: str | None
    fingerprint: str
    fixed: dict  # TrainConfig fields that are not searched (model, max_epochs, patience, seed, ...)
    workers: int
    worker_resources: dict
    use_gpu: bool
    threads: int
    train_storage: str  # where each trial's TorchTrainer keeps its checkpoints
    max_failures: int = 0


def run_trial(config: dict, train_data, settings: TrialSettings) -> None:
    """Tune function trainable: fit one TorchTrainer on the hyperparameters in ``config``.

    ``TuneReportCallback`` forwards rank 0's per-epoch metrics, with the path of the checkpoint
    when one was written, to Tune.
    """
    trial_id = ray.tune.get_context().get_trial_id()
    loop_config = {"train": {**settings.fixed, **config}, "dataset_path": settings.dataset_path,
                   "dataset": settings.dataset, "data_dir": settings.data_dir, "fingerprint": settings.fingerprint,
                   "threads": settings.threads, "use_gpu": settings.use_gpu}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config, datasets={"train": train_data},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                     resources_per_worker=settings.worker_resources),
        run_config=RunConfig(name=trial_id, storage_path=settings.train_storage, callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=MONITOR,
                                                                checkpoint_score_order="max"),
                             failure_config=FailureConfig(max_failures=settings.max_failures)))
    trainer.fit()
