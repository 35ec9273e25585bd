"""One model's row in a comparison: its chosen configuration evaluated on test in both protocols, with 95%
bootstrap intervals over test users, paired randomisation tests against every other model, and its
retrains and defaults beside it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from lrml.evaluate import Evaluator
from lrml.model import Recommender
from lrml_tune.comparison.retrain import METRICS, PROTOCOLS
from lrml_tune.comparison.selection import Candidate
from lrml_tune.comparison.stats import bootstrap_ci, paired_randomization_test

LABELS = {"lrml": "LRML", "cml": "CML", "bpr": "BPR-MF", "ease": "EASE", "pop": "popularity"}
TESTED_METRIC = "ndcg@10"


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


