"""Search a model's hyperparameters with Ray Tune and Optuna: ``python tune/search.py --help``.

The command is ``lrml_tune.sweep.main``; this script runs it from a clone, as ``lrml-search`` does when installed.
"""
import sys

from lrml_tune.sweep import main

if __name__ == "__main__":
    sys.exit(main())
