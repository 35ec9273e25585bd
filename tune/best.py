"""Evaluate a search's chosen models beside tuned baselines: ``python tune/best.py --help``.

The command is ``lrml_tune.comparison.main``; this script runs it from a clone, as ``lrml-best`` does when
installed.
"""
import sys

from lrml_tune.comparison import main

if __name__ == "__main__":
    sys.exit(main())
