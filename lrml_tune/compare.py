"""Compare a tuned LRML with baselines tuned on the same budget: which configuration each search returns,
its test metrics with confidence intervals and paired tests, its retrains with fresh seeds, and the same
model's defaults trained to convergence.

Searches compare when they ran on the same prepared dataset with the same trial budget, epochs,
patience, seed and strategy (``same_budget``); the baselines' searches are found beside the LRML search.

Selection: validation has one held-out item per user, so the single best trial of a search is partly
the luckiest. With ``candidates`` > 1, the top configurations are each retrained with the fresh seeds
and the one with the best mean validation metric is chosen; its test metrics are never looked at first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs

from lrml import checkpoint
from lrml.evaluate import Evaluator
from lrml.model import Recommender
from lrml.train import MONITOR, TrainConfig, defaults
from lrml_tune.experiment import Experiment, TrialSummary
from lrml_tune.retrain import METRICS, PROTOCOLS, RunStore, monitored, retrain, spread
from lrml_tune.settings import SearchRecord, filesystem
from lrml_tune.space import at_edges
from lrml_tune.stats import bootstrap_ci, paired_randomization_test

BASELINES = ("cml", "bpr")
LABELS = {"lrml": "LRML", "cml": "CML", "bpr": "BPR-MF", "ease": "EASE", "pop": "popularity"}
RETRAIN_SEEDS = (1, 2, 3)  # fresh seeds: the search's own seed picked the winner and would flatter it
TESTED_METRIC = "ndcg@10"


@dataclass
class Candidate:
    """One of a search's top configurations, retrained with ``RETRAIN_SEEDS``."""

    trial: str
    config: dict
    search_valid: float  # the trial's best validation metric in the search (its own seed)
    runs: dict  # retrain.spread of the retrains


@dataclass
class ModelResult:
    """One model's row in the comparison: its chosen configuration, evaluated from the search's checkpoint."""

    model: str  # lrml, cml, bpr, ease or pop
    tuned_by: str | None  # the search's experiment name, "best.py" (EASE) or None (popularity)
    trial: str | None
    config: dict
    valid: dict[str, dict[str, float]]  # protocol -> metric -> mean
    test: dict[str, dict[str, dict]]  # protocol -> metric -> {"mean", "ci95": [low, high]}
    per_user: dict[str, dict[str, np.ndarray]] = field(repr=False, default_factory=dict)  # test, for paired tests
    p_values: dict[str, dict[str, float]] = field(default_factory=dict)  # other model -> protocol -> p on nDCG@10
    candidates: list[Candidate] = field(default_factory=list)  # the chosen one first
    defaults: dict = field(default_factory=dict)  # the model's defaults retrained: retrain.spread, or one fit
    notes: list[str] = field(default_factory=list)  # warnings: a range too narrow, a trial still improving
    tried: dict[float, float] = field(default_factory=dict)  # tuned here (EASE): each weight's validation metric

    @property
    def label(self) -> str:
        return LABELS[self.model]

    @property
    def seeds(self) -> dict:
        """The chosen configuration's retrains (empty when there were none)."""
        return self.candidates[0].runs if self.candidates else {}

    def as_record(self) -> dict:
        """What evaluation.json keeps: everything but the per-user arrays."""
        return {key: value for key, value in asdict(self).items() if key != "per_user"}


def same_budget(first: SearchRecord, second: SearchRecord) -> bool:
    """Whether two searches had the same data, trials, epochs, patience, seed and strategy (the model may differ)."""
    def budget(record: SearchRecord) -> tuple:
        s = record.settings
        return (record.fingerprint, s.num_samples, s.max_epochs, s.patience, s.grace_period, s.seed, s.searcher,
                s.scheduler)
    return budget(first) == budget(second)


def baseline_name(lrml_name: str, model: str) -> str:
    """The experiment name a baseline's search gets beside the LRML search ``lrml_name``."""
    stem, found, suffix = lrml_name.rpartition("-lrml")
    return f"{stem}-{model}{suffix}" if found else f"{lrml_name}-{model}"


def find_baseline(lrml_location: str, lrml: SearchRecord, model: str) -> str | None:
    """A finished search of ``model`` with LRML's budget beside the LRML search (in the folder it lies in
    now), by preference the one named after it."""
    parent, lrml_name = lrml_location.rstrip("/").rsplit("/", 1)
    storage, parent_path = filesystem(parent)
    found = []
    for info in storage.get_file_info(pyarrow.fs.FileSelector(parent_path)):
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
    """The ``tune/search.py`` arguments that search ``model`` on LRML's budget, beside the LRML search, with the
    same resources and tracking."""
    parent, lrml_name = lrml_location.rstrip("/").rsplit("/", 1)
    s = lrml.settings
    args = ["--model", model, "--name", baseline_name(lrml_name, model), "--storage-path", parent,
            "--dataset", s.dataset, "--num-samples", str(s.num_samples), "--max-epochs", str(s.max_epochs),
            "--patience", str(s.patience), "--grace-period", str(s.grace_period), "--seed", str(s.seed),
            "--searcher", s.searcher, "--scheduler", s.scheduler, "--workers-per-trial", str(s.workers_per_trial),
            "--cpus-per-worker", f"{s.cpus_per_worker:g}", "--gpus-per-worker", f"{s.gpus_per_worker:g}",
            "--max-failures", str(s.max_failures), "--worker-start-timeout", f"{s.worker_start_timeout:g}"]
    for flag, value in (("--data-dir", s.data_dir), ("--concurrency", s.concurrency), ("--address", s.address),
                        ("--node-ip-address", s.node_ip_address)):
        if value is not None:
            args += [flag, str(value)]
    if s.mlflow is not None:
        args += ["--mlflow", s.mlflow] if s.mlflow else ["--mlflow"]
    return args + (["--wandb"] if s.wandb else [])


def candidates(experiment: Experiment, count: int, dataset_path: str, store: RunStore | None = None) -> list[Candidate]:
    """The search's ``count`` best distinct configurations, each retrained with ``RETRAIN_SEEDS`` (or read from
    ``store``), the one with the best mean validation metric first (ties: the search's order)."""
    top: list[TrialSummary] = []
    for trial in experiment.trials:
        if len(top) < count and all(trial.config != kept.config for kept in top):
            top.append(trial)
    configs = [[replace(train_config(experiment, trial), seed=seed) for seed in RETRAIN_SEEDS] for trial in top]
    finals = retrain([config for group in configs for config in group], dataset_path,
                     f"{experiment.record.settings.model}: {len(top)} configuration(s) x {len(RETRAIN_SEEDS)} seeds", store)
    found = [Candidate(trial.trial_id, trial.config, trial.valid[MONITOR],
                       spread(finals[index * len(RETRAIN_SEEDS):(index + 1) * len(RETRAIN_SEEDS)]))
             for index, trial in enumerate(top)]
    return sorted(found, key=lambda candidate: -monitored(candidate.runs)) if finals else found


def train_config(experiment: Experiment, trial: TrialSummary) -> TrainConfig:
    """The full training configuration of a trial: the model's defaults with the search's budget and the trial's
    searched values."""
    s = experiment.record.settings
    return replace(defaults(s.model), max_epochs=s.max_epochs, patience=s.patience, **trial.config)


def defaults_runs(model: str, max_epochs: int, patience: int, dataset_path: str, store: RunStore | None = None) -> dict:
    """The model's defaults (``lrml.train.DEFAULTS``) trained to convergence with ``RETRAIN_SEEDS``: what not
    searching gives. ``max_epochs`` and ``patience`` are the search's, or more."""
    config = replace(defaults(model), max_epochs=max_epochs, patience=patience)
    finals = retrain([replace(config, seed=seed) for seed in RETRAIN_SEEDS], dataset_path, f"{model} defaults", store)
    return {"config": asdict(config), **spread(finals)}


def notes_for(experiment: Experiment, chosen: Candidate) -> list[str]:
    """Warnings on a chosen configuration: values at the ends of their ranges; a trial that was still improving."""
    settings = experiment.record.settings
    notes = [f"{line}: a wider range may do better" for line in at_edges(settings.space, chosen.config)]
    trial = next(trial for trial in experiment.trials if trial.trial_id == chosen.trial)
    if trial.best_epoch == trial.epochs:
        notes.append(f"trial {trial.trial_id} was still improving at its last epoch ({trial.epochs} of "
                     f"--max-epochs {settings.max_epochs})")
    return notes


def evaluate(model: Recommender, evaluator: Evaluator, name: str, tuned_by: str | None, trial: str | None,
             config: dict) -> ModelResult:
    """Validation means and test metrics with 95% bootstrap intervals over test users, in both protocols."""
    per_user = evaluator.per_user(model, "test")
    test = {protocol: {metric: {"mean": float(values[metric].mean()), "ci95": list(bootstrap_ci(values[metric]))}
                       for metric in METRICS}
            for protocol, values in per_user.items()}
    return ModelResult(name, tuned_by, trial, config, evaluator.evaluate(model, "valid"), test, per_user)


def add_paired_tests(results: list[ModelResult]) -> None:
    """Each model's p-value against every other on per-user test nDCG@10, in both protocols."""
    for result in results:
        result.p_values = {other.model: {protocol: paired_randomization_test(
            result.per_user[protocol][TESTED_METRIC], other.per_user[protocol][TESTED_METRIC])
            for protocol in PROTOCOLS} for other in results if other is not result}


def per_user_table(results: list[ModelResult], raw_users: np.ndarray) -> pd.DataFrame:
    """Every model's test metrics per user (``raw_users``: the test users' MovieLens ids, in the split's order),
    a row per user, model and protocol: what a paired test over several search seeds pools."""
    return pd.concat([pd.DataFrame({"user": raw_users, "model": result.model, "protocol": protocol,
                                    **{metric: values[metric] for metric in METRICS}})
                      for result in results for protocol, values in result.per_user.items()], ignore_index=True)


def drop(result: ModelResult, protocol: str = "sampled") -> dict[str, float]:
    """How far nDCG@10 falls from validation to test: for the evaluated checkpoint, and over the retrains."""
    found = {"checkpoint": result.valid[protocol][TESTED_METRIC] - result.test[protocol][TESTED_METRIC]["mean"]}
    if result.seeds:
        found["retrains"] = (result.seeds["valid"][protocol][TESTED_METRIC]["mean"]
                             - result.seeds["test"][protocol][TESTED_METRIC]["mean"])
    return found


def load_trial(experiment: Experiment, trial_id: str, fingerprint: str, scratch: Path) -> Recommender:
    """The model of a trial's best checkpoint, loaded with lrml alone."""
    trial = next(trial for trial in experiment.trials if trial.trial_id == trial_id)
    model, _ = checkpoint.load(experiment.fetch_checkpoint(trial, scratch), expected_fingerprint=fingerprint)
    return model

