"""The search and its evaluation on Ray Tune: settings, spaces, the searcher and scheduler, trials, comparison.

Users run ``tune/search.py`` and ``tune/best.py`` from a clone, or the installed ``lrml-search`` and
``lrml-best``: all four call ``lrml_tune.search.main`` and ``lrml_tune.best.main``.
"""
