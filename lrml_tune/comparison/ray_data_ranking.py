"""Evaluation as Ray Data batch inference: blocks of users ranked by a pool of actors, each of which loads the
model and the dataset once, across every node of the cluster (a laptop's cores, on a laptop).

Each block starts at a multiple of ``EVAL_BATCH_USERS``, so every actor scores the same batches of users
that ``lrml.evaluate.Evaluator`` scores in one process: the ranks, and so the metrics, are the same.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import ray
import torch

from lrml.data import load_dataset, read_manifest
from lrml.evaluate import EVAL_BATCH_USERS, PROTOCOLS, Evaluator
from lrml.model import Recommender
from lrml_tune.sweep.local_ray import LOCAL_NODE_IP, exclusive_local_ray

BLOCK_USERS = 32 * EVAL_BATCH_USERS  # users an actor ranks per call: long enough to hide the call's overhead


class RankUsers:
    """A Ray Data actor: the model and the prepared dataset, loaded once; ``__call__`` ranks blocks of users."""

    def __init__(self, model: Recommender, dataset_path: str, part: str, protocols: tuple[str, ...]):
        torch.set_num_threads(1)  # one CPU an actor: the pool, not the threads, takes the cores
        self.model, self.part, self.protocols = model, part, protocols
        self.evaluator = Evaluator(load_dataset(dataset_path))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        found = {protocol: [] for protocol in self.protocols}
        positions = []
        for first, last in zip(batch["first"], batch["last"]):
            ranks = self.evaluator.ranks(self.model, self.part, self.protocols, int(first), int(last))
            positions.append(np.arange(first, first + len(next(iter(ranks.values())))))
            for protocol in self.protocols:
                found[protocol].append(ranks[protocol].numpy())
        return {"position": np.concatenate(positions),
                **{protocol: np.concatenate(arrays) for protocol, arrays in found.items()}}


def ray_data_ranks(model: Recommender, dataset_path: str, part: str, protocols: tuple[str, ...] = PROTOCOLS,
                   actors: int | None = None, block_users: int = BLOCK_USERS) -> dict[str, torch.Tensor]:
    """``Evaluator.ranks`` for the whole split, computed by ``actors`` Ray Data actors of one CPU each (by default
    as many as the connected cluster has CPUs), ``block_users`` users a call (a multiple of ``EVAL_BATCH_USERS``);
    Ray Data shows a progress bar while they run."""
    if block_users % EVAL_BATCH_USERS:
        raise ValueError(f"block_users={block_users}: must be a multiple of {EVAL_BATCH_USERS}")
    users = read_manifest(dataset_path)["counts"][part]
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"first": first, "last": first + block_users} for first in range(0, users, block_users)]
    blocks = ray.data.from_items(items, override_num_blocks=len(items))  # a block each: every actor gets work
    ranked = blocks.map_batches(RankUsers, batch_size=1, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=actors),
                                fn_constructor_kwargs={"model": model, "dataset_path": dataset_path, "part": part,
                                                       "protocols": protocols})
    columns = {name: [] for name in ("position", *protocols)}
    for batch in ranked.iter_batches(batch_size=None, batch_format="numpy"):
        for name in columns:
            columns[name].append(batch[name])
    order = np.argsort(np.concatenate(columns.pop("position")))
    return {protocol: torch.as_tensor(np.concatenate(arrays)[order]) for protocol, arrays in columns.items()}


class RayDataEvaluator(Evaluator):
    """An ``Evaluator`` whose whole-split rankings run as Ray Data batch inference on the connected cluster."""

    def __init__(self, dataset, actors: int | None = None, ks: tuple[int, ...] = (10,)):
        super().__init__(dataset, ks)
        self.actors = actors

    def ranks(self, model: Recommender, part: str, protocols: tuple[str, ...] = PROTOCOLS, first: int = 0,
              last: int | None = None) -> dict[str, torch.Tensor]:
        if first or last is not None:  # a block: an actor's own call
            return super().ranks(model, part, protocols, first, last)
        return ray_data_ranks(model, str(self.dataset.path), part, protocols, self.actors)


@contextlib.contextmanager
def evaluation_cluster(address: str) -> Iterator[None]:
    """Connected to the Ray cluster at ``address``, or to a local Ray started for it (``"local"``: on loopback,
    held alone on this machine as a search's is) until the block ends."""
    local = address == "local"
    with exclusive_local_ray("tune/best.py") if local else contextlib.nullcontext():
        if local:
            ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
