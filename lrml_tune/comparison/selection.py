"""Which configuration a search returns. Validation has one held-out item per user, so a search's single
best trial is partly its luckiest: its top configurations are each retrained with fresh seeds and the
one with the best mean validation metric is chosen; its test metrics are never looked at first. Beside
it, the model's defaults trained to convergence: what not searching gives.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lrml import checkpoint
from lrml.model import Recommender
from lrml.train import TrainConfig, defaults
from lrml_tune.comparison.retrain import Runner, RunStore, monitored, retrain, spread
from lrml_tune.sweep import Experiment, TrialSummary
from lrml_tune.sweep.space import at_edges

RETRAIN_SEEDS = (1, 2, 3)  # fresh seeds: the search's own seed picked the winner and would flatter it


@dataclass
class Candidate:
    """One of a search's top configurations, retrained with ``RETRAIN_SEEDS``."""

    trial: str
    config: dict
    search_valid: float  # the trial's best validation metric in the search (its own seed)
    runs: dict  # retrain.spread of the retrains


def candidates(experiment: Experiment, count: int, dataset_path: str, store: RunStore | None = None,
               runner: Runner | None = None) -> list[Candidate]:
    """The search's ``count`` best distinct configurations, each retrained with ``RETRAIN_SEEDS`` (or read from
    ``store``) on ``runner``, the one with the best mean validation metric first (ties: the search's order)."""
    top: list[TrialSummary] = []
    for trial in experiment.trials:
        if len(top) < count and all(trial.config != kept.config for kept in top):
            top.append(trial)
    configs = [[replace(train_config(experiment, trial), seed=seed) for seed in RETRAIN_SEEDS] for trial in top]
    finals = retrain([config for group in configs for config in group], dataset_path,
                     f"{experiment.record.settings.model}: {len(top)} configuration(s) x {len(RETRAIN_SEEDS)} seeds", store,
                     runner)
    found = [Candidate(trial.trial_id, trial.config, trial.valid[experiment.monitor],
                       spread(finals[index * len(RETRAIN_SEEDS):(index + 1) * len(RETRAIN_SEEDS)]))
             for index, trial in enumerate(top)]
    return sorted(found, key=lambda candidate: -monitored(candidate.runs, experiment.metric)) if finals else found


def train_config(experiment: Experiment, trial: TrialSummary) -> TrainConfig:
    """The full training configuration of a trial: the model's defaults with the search's budget, the trial's
    searched values, and early stopping on the experiment's selection metric."""
    s = experiment.record.settings
    return replace(defaults(s.model), max_epochs=s.max_epochs, patience=s.patience, monitor=experiment.metric,
                   **trial.config)


def defaults_runs(model: str, max_epochs: int, patience: int, monitor: str, dataset_path: str,
                  store: RunStore | None = None, runner: Runner | None = None) -> dict:
    """The model's defaults (``lrml.train.DEFAULTS``) trained to convergence with ``RETRAIN_SEEDS`` on ``runner``:
    what not searching gives. ``max_epochs``, ``patience`` and ``monitor`` (the protocol early stopping follows)
    are the search's, or more epochs."""
    config = replace(defaults(model), max_epochs=max_epochs, patience=patience, monitor=monitor)
    finals = retrain([replace(config, seed=seed) for seed in RETRAIN_SEEDS], dataset_path, f"{model} defaults", store, runner)
    return {"config": asdict(config), **spread(finals)}


def notes_for(experiment: Experiment, chosen: Candidate) -> list[str]:
    """Warnings on a chosen configuration: values at the ends of their ranges; a trial that was still improving."""
    settings = experiment.record.settings
    notes = [f"{line}: a wider range may do better" for line in at_edges(experiment.record.space, chosen.config)]
    trial = next(trial for trial in experiment.trials if trial.trial_id == chosen.trial)
    if trial.best_epoch == trial.epochs:
        notes.append(f"trial {trial.trial_id} was still improving at its last epoch ({trial.epochs} of "
                     f"--max-epochs {settings.max_epochs})")
    return notes


def load_trial(experiment: Experiment, trial_id: str, fingerprint: str, scratch: Path) -> Recommender:
    """The model of a trial's best checkpoint, loaded with lrml alone."""
    trial = next(trial for trial in experiment.trials if trial.trial_id == trial_id)
    model, _ = checkpoint.load(experiment.fetch_checkpoint(trial, scratch), expected_fingerprint=fingerprint)
    return model

