"""``best.py``'s runs on a Ray cluster: each retrain a Ray task of one CPU, wherever the cluster has one, on the
dataset that node prepared (or sees), its result as a ``concurrent.futures.Future``."""
from __future__ import annotations

from concurrent.futures import Future

import ray

from lrml.train import TrainConfig
from lrml_tune.comparison.retrain import train
from lrml_tune.sweep.trainable import DatasetRef, node_ip


@ray.remote(num_cpus=1)
def _train_task(config: TrainConfig, dataset: DatasetRef) -> tuple[dict, str]:
    return train(config, dataset.prepared_path()), node_ip()


class RayTasks:
    """A ``retrain.Runner`` on the cluster ``ray.init`` connected to; ``dataset`` is how its nodes find the data."""

    def __init__(self, dataset: DatasetRef):
        self.dataset = ray.put(dataset)

    def submit(self, config: TrainConfig) -> Future:
        return _train_task.remote(config, self.dataset).future()
