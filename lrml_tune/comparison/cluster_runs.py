"""``best.py``'s work on a Ray cluster, wherever it has a free CPU, on the dataset each node prepared (or sees):
each retrain a Ray task of one CPU, its result as a ``concurrent.futures.Future``; each EASE weight's solve a
Ray task of one CPU and the memory the solve holds."""
from __future__ import annotations

from concurrent.futures import Future

import ray
import torch

from lrml.baselines import EASE
from lrml.data import Dataset, load_dataset
from lrml.evaluate import Evaluator
from lrml.train import TrainConfig
from lrml_tune.comparison.ease_grid import METRIC, make_model, solve_memory, training_matrix
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


@ray.remote(num_cpus=1)
def _ease_score(weight: float, dataset: DatasetRef, gram, protocol: str) -> tuple[float, str]:
    """Validation nDCG@10 in ``protocol`` of EASE at ``weight``, solved from ``X^T X`` (``gram``, from the object
    store)."""
    data = load_dataset(dataset.prepared_path())
    model = make_model(data, training_matrix(data), weight)
    model.solve(torch.tensor(gram))  # a writable copy: the object store's array is read-only
    return Evaluator(data).evaluate(model, "valid", (protocol,))[protocol][METRIC], node_ip()


class RaySolves:
    """``ease_grid.tune_ease``'s solver on the connected cluster: a round's weights solved at once, one task each;
    the chosen weight solved again here. ``nodes`` holds where the solves ran."""

    def __init__(self, dataset: Dataset, where: DatasetRef, protocol: str = "sampled"):
        self.dataset, self.where, self.protocol = dataset, where, protocol
        self.seen = training_matrix(dataset)
        self.gram = make_model(dataset, self.seen, 1.0).gram()
        self.gram_ref = ray.put(self.gram.numpy())
        self.memory = solve_memory(dataset.num_users, dataset.num_items)
        self.nodes: set[str] = set()

    def scores(self, weights: list[float]) -> list[float]:
        found = ray.get([_ease_score.options(memory=self.memory).remote(weight, self.where, self.gram_ref, self.protocol)
                         for weight in weights])
        self.nodes.update(node for _, node in found)
        return [score for score, _ in found]

    def model(self, weight: float) -> EASE:
        model = make_model(self.dataset, self.seen, weight)
        model.solve(self.gram)
        return model
