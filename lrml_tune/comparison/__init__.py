"""After the search: the model a search returns, judged. Each search's top configurations are retrained with
fresh seeds and one is chosen on validation (``candidates``), baselines searched on the same budget and
EASE tuned beside it, every model's defaults trained to convergence, and all evaluated on test in both
protocols with intervals and paired tests (``ModelResult``). ``tune/best.py`` and ``lrml-best`` run it
(``main``); finished retrains are kept in a ``RunStore``.
"""
from lrml_tune.comparison.command import main
from lrml_tune.comparison.model_result import LABELS, ModelResult
from lrml_tune.comparison.retrain import RunStore, kept_runs
from lrml_tune.comparison.selection import RETRAIN_SEEDS, Candidate, candidates

__all__ = ["LABELS", "RETRAIN_SEEDS", "Candidate", "ModelResult", "RunStore", "candidates", "kept_runs", "main"]
