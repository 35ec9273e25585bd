"""The tuning package, on Ray: ``lrml_tune.sweep`` searches a model's hyperparameters (``tune/search.py``,
``lrml-search``), and ``lrml_tune.comparison`` judges what a search returns against tuned baselines and the
model's defaults (``tune/best.py``, ``lrml-best``). The model, data and trainer are ``lrml``'s, which
imports no Ray.
"""
