"""Refuse a search that cannot work, naming the value at fault: before Ray starts where that can be
known, else as soon as the search has joined its cluster."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lrml.errors import UserError
from lrml.train import TrainConfig
from lrml_tune.sweep.record import SearchRecord
from lrml_tune.sweep.settings import SearchSettings
from lrml_tune.sweep.space import Param
from lrml_tune.sweep.storage import filesystem, is_uri


def check_settings(settings: SearchSettings, resume: bool) -> None:
    """What the settings need of this machine (their values were checked as they were made): the data folder,
    the resources of a local run and the experiment's storage."""
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
    """Write and remove a file in the experiment's folder (local or s3:// / gs://), or say why not; a folder made
    for the check is removed, so that a search refused later (its data unreadable) leaves none behind."""
    try:
        storage, path = filesystem(experiment)
        existed = storage.get_file_info(path).type != pyarrow.fs.FileType.NotFound
        storage.create_dir(path, recursive=True)
        probe = f"{path}/.lrml-write-check-{uuid.uuid4().hex}"
        with storage.open_output_stream(probe) as handle:
            handle.write(b"written by tune/search.py to check that the storage takes writes\n")
        storage.delete_file(probe)
        if not existed:
            storage.delete_dir(path)
    except (OSError, pyarrow.ArrowException) as error:
        raise UserError(f"--storage-path: cannot write to {experiment}: {error}") from None


def storage_warning(settings: SearchSettings, space: dict[str, Param], counts: dict) -> str | None:
    """A warning when a local storage path has less free space than the search's checkpoints may take: each trial
    keeps one, of the largest model the space allows (its embeddings, and Adam's two moments of them)."""
    if is_uri(settings.storage_path):
        return None
    widest = max([max(param.values) if param.kind == "choice" else param.high for param in space.values()
                  if param.sets == "embedding_dim"] or [TrainConfig.embedding_dim])
    needed = settings.num_samples * 3 * 4 * (counts["users"] + counts["items"]) * widest
    free = shutil.disk_usage(Path(settings.storage_path).expanduser().resolve()).free
    if free >= needed:
        return None
    return (f"warning: {settings.storage_path} has {free / 2**30:.1f} GB free; {settings.num_samples} checkpoints of "
            f"up to {needed / settings.num_samples / 2**20:.0f} MB each may take {needed / 2**30:.1f} GB")


def check_storage_shared(storage_path: str, given: bool) -> None:
    """On a cluster of several nodes, refuse storage that some node cannot reach."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    if not given:
        raise UserError(f"this Ray cluster has {len(nodes)} nodes: pass --storage-path that every node can reach "
                        "(s3://bucket/path, gs://bucket/path, or a folder on a mount all nodes share)")
    if is_uri(storage_path):
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
