"""Compare a tuned LRML with baselines tuned on the same budget: test metrics with confidence
intervals, paired tests against LRML, and each best configuration retrained with fresh seeds.

Searches compare when they ran on the same prepared dataset with the same trial budget, epochs,
seed and strategy (``same_budget``); the baselines' searches are found beside the LRML search.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.fs
import torch

from lrml.data import load_dataset
from lrml.evaluate import Evaluator
from lrml.model import Recommender
from lrml.train import TrainConfig, Trainer
from lrml_tune.settings import SearchRecord
from lrml_tune.stats import bootstrap_ci, paired_randomization_test

BASELINES = ("cml", "bpr")
LABELS = {"lrml": "LRML", "cml": "CML", "bpr": "BPR-MF", "pop": "popularity"}
RETRAIN_SEEDS = (1, 2, 3, 4, 5)  # fresh seeds: the search's own seed picked the winner and would flatter it
METRICS = ("hr@10", "ndcg@10", "mrr")
PROTOCOLS = ("sampled", "full")
TESTED_METRIC = "ndcg@10"


@dataclass
class ModelResult:
    """One model's row in the comparison."""

    model: str  # lrml, cml, bpr or pop
    tuned_by: str | None  # the search's experiment, or None (popularity has nothing to tune)
    trial: str | None
    config: dict
    valid: dict[str, dict[str, float]]  # protocol -> metric -> mean
    test: dict[str, dict[str, dict]]  # protocol -> metric -> {"mean", "ci95": [low, high]}
    per_user: dict[str, dict[str, np.ndarray]] = field(repr=False, default_factory=dict)  # test, for paired tests
    p_vs_lrml: dict[str, float] = field(default_factory=dict)  # protocol -> p-value on per-user nDCG@10
    seeds: dict[str, dict[str, dict]] = field(default_factory=dict)  # protocol -> metric -> {"mean", "sd", "values"}

    @property
    def label(self) -> str:
        return LABELS[self.model]


def same_budget(first: SearchRecord, second: SearchRecord) -> bool:
    """Whether two searches had the same data, trials, epochs, seed and strategy (the model may differ)."""
    def budget(record: SearchRecord) -> tuple:
        s = record.settings
        return (record.fingerprint, s.num_samples, s.max_epochs, s.grace_period, s.seed, s.searcher, s.scheduler)
    return budget(first) == budget(second)


def baseline_name(lrml_name: str, model: str) -> str:
    """The experiment name a baseline's search gets beside the LRML search ``lrml_name``."""
    stem = lrml_name[:-len("-lrml")] if lrml_name.endswith("-lrml") else lrml_name
    return f"{stem}-{model}"


def find_baseline(lrml_location: str, lrml: SearchRecord, model: str) -> str | None:
    """A finished search of ``model`` with LRML's budget beside the LRML search (in the folder it lies in
    now), by preference the one named after it."""
    parent, lrml_name = lrml_location.rstrip("/").rsplit("/", 1)
    filesystem, parent_path = pyarrow.fs.FileSystem.from_uri(parent if "://" in parent else str(Path(parent).resolve()))
    found = []
    for info in filesystem.get_file_info(pyarrow.fs.FileSelector(parent_path)):
        location = f"{parent}/{info.base_name}"
        if info.type != pyarrow.fs.FileType.Directory or not SearchRecord.exists(location):
            continue
        try:
            record = SearchRecord.read(location)
        except ValueError:
            continue  # another version's search
        if record.settings.model == model and record.outcome is not None and same_budget(lrml, record):
            found.append((info.base_name != baseline_name(lrml_name, model), location))
    return min(found)[1] if found else None


def baseline_search_args(lrml_location: str, lrml: SearchRecord, model: str) -> list[str]:
    """The ``tune/search.py`` arguments that search ``model`` on LRML's budget, beside the LRML search."""
    parent, lrml_name = lrml_location.rstrip("/").rsplit("/", 1)
    s = lrml.settings
    args = ["--model", model, "--name", baseline_name(lrml_name, model), "--storage-path", parent,
            "--dataset", s.dataset, "--num-samples", str(s.num_samples), "--max-epochs", str(s.max_epochs),
            "--grace-period", str(s.grace_period), "--seed", str(s.seed), "--searcher", s.searcher,
            "--scheduler", s.scheduler, "--workers-per-trial", str(s.workers_per_trial),
            "--cpus-per-worker", f"{s.cpus_per_worker:g}", "--gpus-per-worker", f"{s.gpus_per_worker:g}",
            "--max-failures", str(s.max_failures)]
    for flag, value in (("--data-dir", s.data_dir), ("--concurrency", s.concurrency), ("--address", s.address)):
        if value is not None:
            args += [flag, str(value)]
    return args


def evaluate(model: Recommender, evaluator: Evaluator, name: str, tuned_by: str | None, trial: str | None,
             config: dict) -> ModelResult:
    """Validation means and test metrics with 95% bootstrap intervals over test users, in both protocols."""
    per_user = evaluator.per_user(model, "test")
    test = {protocol: {metric: {"mean": float(values[metric].mean()), "ci95": list(bootstrap_ci(values[metric]))}
                       for metric in METRICS}
            for protocol, values in per_user.items()}
    return ModelResult(name, tuned_by, trial, config, evaluator.evaluate(model, "valid"), test, per_user)


def add_paired_tests(results: list[ModelResult]) -> None:
    """Each model's p-value against LRML on per-user test nDCG@10, in both protocols."""
    lrml = next(result for result in results if result.model == "lrml")
    for result in results:
        if result is not lrml:
            result.p_vs_lrml = {protocol: paired_randomization_test(lrml.per_user[protocol][TESTED_METRIC],
                                                                    result.per_user[protocol][TESTED_METRIC])
                                for protocol in PROTOCOLS}


def add_seed_runs(results: list[ModelResult], dataset_path: str) -> None:
    """Retrain every trainable model's configuration with ``RETRAIN_SEEDS``; mean and sd of its test metrics."""
    jobs = [(result, replace(TrainConfig(**result.config), seed=seed))
            for result in results if result.model != "pop" for seed in RETRAIN_SEEDS]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        finals = list(pool.map(_retrain, [config for _, config in jobs], [dataset_path] * len(jobs)))
    for result in results:
        if result.model == "pop":
            continue
        mine = [final for (owner, _), final in zip(jobs, finals) if owner is result]
        result.seeds = {protocol: {metric: _spread([final["test"][protocol][metric] for final in mine])
                                   for metric in METRICS} for protocol in PROTOCOLS}


def _retrain(config: TrainConfig, dataset_path: str) -> dict:
    """One training run in a worker process (one thread: the pool runs one per core)."""
    torch.set_num_threads(1)
    return Trainer(config, load_dataset(dataset_path)).fit().final


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)), "values": values}
