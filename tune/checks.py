"""Refuse a search that cannot work, naming the value at fault: before Ray starts where that can be
known, else as soon as the search has joined its cluster."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lrml.data import get_release
from lrml.data.synthetic import is_synthetic, synthetic_shape
from lrml.errors import UserError
from lrml_tune.settings import SearchRecord, SearchSettings


def check_settings(settings: SearchSettings, resume: bool) -> None:
    """Counts, epochs, dataset, data folder, resources of a local run and the experiment's storage."""
    for flag, value in (("--num-samples", settings.num_samples), ("--max-epochs", settings.max_epochs),
                        ("--patience", settings.patience), ("--grace-period", settings.grace_period),
                        ("--workers-per-trial", settings.workers_per_trial),
                        ("--worker-start-timeout", settings.worker_start_timeout)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1; got {value:g}")
    if settings.max_failures < 0:
        raise UserError(f"--max-failures must be at least 0; got {settings.max_failures}")
    if settings.cpus_per_worker <= 0 or settings.gpus_per_worker < 0:
        raise UserError(f"--cpus-per-worker must be above 0 and --gpus-per-worker at least 0; got "
                        f"{settings.cpus_per_worker:g} and {settings.gpus_per_worker:g}")
    if settings.concurrency is not None and settings.concurrency < 1:
        raise UserError(f"--concurrency must be at least 1; got {settings.concurrency}")
    if settings.grace_period > settings.max_epochs:
        raise UserError(f"--grace-period {settings.grace_period} is longer than --max-epochs {settings.max_epochs}")
    if is_synthetic(settings.dataset):  # an unknown dataset names the known ones
        synthetic_shape(settings.dataset)
        if settings.data_dir:
            raise UserError(f"--data-dir {settings.data_dir}: {settings.dataset} is generated, not read from a folder")
    else:
        get_release(settings.dataset)
    if settings.data_dir and not Path(settings.data_dir).exists():
        raise UserError(f"--data-dir {settings.data_dir}: no such file or folder")
    if settings.address is None:
        check_local_resources(settings)
    if not resume and SearchRecord.exists(settings.experiment):
        raise UserError(f"{settings.experiment} already holds a search: pass --resume to continue it, or another "
                        "--name")
    check_storage_writable(settings.experiment)


def check_local_resources(settings: SearchSettings) -> None:
    """A local Ray gets this machine's CPUs and GPUs: refuse a trial that could never fit on them."""
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    workers = settings.workers_per_trial
    if workers * settings.cpus_per_worker > cpus or workers * settings.gpus_per_worker > gpus:
        raise UserError(f"one trial needs {workers} x {settings.cpus_per_worker:g} CPU and {workers} x "
                        f"{settings.gpus_per_worker:g} GPU; this machine has {cpus} CPU and {gpus} GPU (pass "
                        "--address to search on a cluster)")


def check_storage_writable(experiment: str) -> None:
    """Write and remove a file in the experiment's folder (local or s3:// / gs://), or say why not."""
    location = experiment if "://" in experiment else str(Path(experiment).expanduser().resolve())
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
        filesystem.create_dir(path, recursive=True)
        probe = f"{path}/.lrml-write-check-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(probe) as handle:
            handle.write(b"written by tune/search.py to check that the storage takes writes\n")
        filesystem.delete_file(probe)
    except (OSError, pyarrow.ArrowException) as error:
        raise UserError(f"--storage-path: cannot write to {experiment}: {error}") from None


def check_storage_shared(storage_path: str, given: bool) -> None:
    """On a cluster of several nodes, refuse storage that some node cannot reach."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    if not given:
        raise UserError(f"this Ray cluster has {len(nodes)} nodes: pass --storage-path that every node can reach "
                        "(s3://bucket/path, gs://bucket/path, or a folder on a mount all nodes share)")
    if "://" in storage_path:
        return
    marker = Path(storage_path) / f".lrml-storage-check-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by tune/search.py to check that every node sees this folder\n")
    try:
        seen = ray.get([_exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                        .remote(str(marker)) for node in nodes])
    finally:
        marker.unlink()
    blind = [node["NodeManagerAddress"] for node, ok in zip(nodes, seen) if not ok]
    if blind:
        raise UserError(f"--storage-path {storage_path} is not visible on node(s) {', '.join(blind)}: use a shared "
                        "mount, s3:// or gs://")


@ray.remote(num_cpus=0)
def _exists(path: str) -> bool:
    return os.path.exists(path)
