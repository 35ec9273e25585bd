"""The search: a model's hyperparameters searched with Ray Tune and Optuna, every trial an ``lrml`` Trainer.

``SearchSettings`` is the one way in: ``run(settings)`` searches (``tune/search.py`` and ``lrml-search``
build the settings from their command line), ``lrml_search.json`` records what ran (``SearchRecord``),
and ``Experiment`` reads a finished search back, its trials ranked and their checkpoints found.
"""
from lrml_tune.sweep.driver import main, run
from lrml_tune.sweep.experiment import Experiment, TrialSummary
from lrml_tune.sweep.record import SearchOutcome, SearchRecord
from lrml_tune.sweep.settings import SearchSettings

__all__ = ["Experiment", "SearchOutcome", "SearchRecord", "SearchSettings", "TrialSummary", "main", "run"]
