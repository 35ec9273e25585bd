"""Which validation metric should a search select on, sampled or full-ranking nDCG@10? Replayed from searches
whose trials reported both protocols every epoch (``tune/search.py --report-both``).

For each search and each protocol, the search's trials are ranked by that protocol's validation nDCG@10 and
its top configurations chosen between as ``tune/best.py`` chooses (each retrained with best.py's seeds,
early-stopped on that protocol; the best mean validation wins). Each choice is scored by its retrains' test
metrics in both protocols, so the two choices of a search are compared with the same estimator. EASE's weight
is chosen on each protocol's validation too (``--ease``). A replay differs from a live ``--metric full`` search
in what stopped its trials (the scheduler and patience followed the search's metric), so one live search per
dataset checks it: pass it as well; its own choice is recorded under its metric. Each search's choices go to
``results/metric/<search>.json``; ``python results/tables.py`` builds the table.

    python bench/metric_choice.py ml-latest-small-lrml-tpe-s0 ml-latest-small-cml-tpe-s0 ... --ease
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lrml.data import load_dataset, prepare
from lrml.evaluate import PROTOCOLS, Evaluator
from lrml_tune.comparison import candidates, kept_runs
from lrml_tune.comparison.command import CANDIDATES, resolve
from lrml_tune.comparison.ease_grid import tune_ease
from lrml_tune.sweep import Experiment, SearchRecord

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "metric"


def replay(location: str, count: int) -> Path:
    """``results/metric/<search>.json``: the search's choice under each protocol (kept once written)."""
    searched = SearchRecord.read(location)  # the record alone: each protocol's Experiment below reads the trials
    settings = searched.settings
    out = OUT / f"{settings.name}.json"
    if out.exists():
        return out
    choices = {}
    for metric in PROTOCOLS:
        experiment = Experiment(location, metric)
        if not experiment.trials:
            raise SystemExit(f"{location}: no trial reported validation {metric}; replay needs searches that report "
                             "both protocols")
        chosen, *_ = candidates(experiment, count, searched.dataset_path, kept_runs())
        choices[metric] = {"trial": chosen.trial, "config": chosen.config, "search_valid": chosen.search_valid,
                           "runs": chosen.runs}
        print(f"{settings.name}: chosen on {metric} validation: trial {chosen.trial}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"search": settings.name, "model": settings.model, "dataset": settings.dataset, "seed": settings.seed,
              "search_metric": settings.metric, "candidates": count, "choices": choices}
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def ease_choices(dataset: str, data_dir: str | None) -> Path:
    """``results/metric/<dataset>-ease.json``: EASE's weight chosen on each protocol's validation, and its test
    metrics (EASE is deterministic: one fit per weight)."""
    out = OUT / f"{dataset}-ease.json"
    if out.exists():
        return out
    data = load_dataset(prepare(dataset, data_dir, progress=False))
    evaluator = Evaluator(data)
    choices = {}
    for metric in PROTOCOLS:
        model, grid = tune_ease(data, evaluator, protocol=metric)
        choices[metric] = {"reg_weight": grid.best, "test": evaluator.evaluate(model, "test")}
        print(f"{dataset} EASE: chosen on {metric} validation: reg_weight {grid.best:g}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "ease", "dataset": dataset, "choices": choices}, indent=2) + "\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("searches", nargs="*", help="experiment folders, or names under results/ray/")
    parser.add_argument("--candidates", type=int, default=CANDIDATES,
                        help=f"top configurations retrained to choose from, as tune/best.py (default {CANDIDATES})")
    parser.add_argument("--ease", nargs="*", metavar="DATASET", default=[],
                        help="datasets on which to choose EASE's weight on each protocol")
    parser.add_argument("--data-dir", help="the --ease dataset's archive or folder (ml-100k: GroupLens's folder or zip)")
    args = parser.parse_args()
    for search in args.searches:
        print(f"wrote {replay(resolve(search), args.candidates)}", flush=True)
    for dataset in args.ease:
        print(f"wrote {ease_choices(dataset, args.data_dir)}", flush=True)
    print("now: python results/tables.py (the selection metric's table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
