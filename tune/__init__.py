"""The search and its evaluation, installed as ``lrml_tune`` (this folder; see pyproject.toml).

``tune/search.py`` and ``tune/best.py`` are also the scripts users run from a clone; the console
commands ``lrml-search`` and ``lrml-best`` run the same ``main``.
"""
