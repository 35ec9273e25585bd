"""Evaluate a search's best checkpoints on the test split and write its results under results/<experiment>/.

    python tune/best.py results/ray/ml-latest-small-lrml            # or an s3:// / gs:// URI, or just the name
    python tune/best.py ml-latest-small-lrml --top-k 3
    python tune/best.py ml-latest-small-lrml --recommend 414        # top-10 films for MovieLens user 414

Loads checkpoints with lrml alone (no search code), evaluates in both protocols (sampled
candidates and full ranking) beside popularity, BPR-MF and CML trained on the same budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from experiment import Experiment
from lrml import checkpoint
from lrml.data import Dataset, load_dataset, prepare
from lrml.evaluate import Evaluator
from lrml.train import Trainer, defaults
from report import importances, write_plots, write_summary, write_tables

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("pop", "bpr", "cml")


def resolve(location: str) -> str:
    """A path, a URI, or the name of an experiment under results/ray/."""
    if "://" in location or Path(location).exists():
        return location
    candidate = REPO / "results" / "ray" / location
    if candidate.exists():
        return str(candidate)
    sys.exit(f"no experiment at {location!r} (nor {candidate})")


def recommend(model, dataset: Dataset, raw_user: int, k: int = 10) -> list[tuple[int, str]]:
    """Top-k (raw item id, title) for a MovieLens user id, excluding everything they already rated."""
    matches = np.flatnonzero(dataset.user_raw_ids == raw_user)
    if len(matches) == 0:
        raise SystemExit(f"user {raw_user} is not in {dataset.manifest['dataset']}")
    user = int(matches[0])
    seen = np.concatenate([dataset.train_items[dataset.train_users == user],
                           dataset.valid_items[dataset.valid_users == user], dataset.test_items[dataset.test_users == user]])
    top = model.recommend(torch.tensor([user]), k=k, exclude=[seen])[0].tolist()
    return [(int(dataset.item_raw_ids[i]), dataset.item_titles[i] or "") for i in top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tune/best.py", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="experiment folder, s3:// or gs:// URI, or name under results/ray/")
    parser.add_argument("--top-k", type=int, default=1, help="evaluate the N best trials (default 1)")
    parser.add_argument("--recommend", type=int, metavar="USER_ID", help="print this MovieLens user's top-10 films and stop")
    parser.add_argument("--out", help="results folder (default results/<experiment name>)")
    args = parser.parse_args(argv)

    experiment = Experiment(resolve(args.experiment))
    settings = experiment.settings
    if not experiment.trials:
        sys.exit(f"{experiment.location}: no trial reported validation metrics yet")
    dataset = load_dataset(prepare(settings["dataset"], settings.get("data_dir"), progress=False))
    chosen = experiment.trials[:args.top_k]
    with tempfile.TemporaryDirectory(prefix="lrml-best-") as scratch:  # cloud checkpoints are copied here to load
        models = [checkpoint.load(experiment.fetch_checkpoint(trial, Path(scratch)),
                                  expected_fingerprint=dataset.fingerprint)[0] for trial in chosen]
    if args.recommend is not None:
        for raw_id, title in recommend(models[0], dataset, args.recommend):
            print(f"{raw_id:>7}  {title}")
        return 0

    evaluator = Evaluator(dataset)
    rows = []
    for trial, model in zip(chosen, models):
        metrics = {part: evaluator.evaluate(model, part) for part in ("valid", "test")}
        rows.append({"model": "LRML (tuned)", "trial": trial.trial_id, "config": trial.config,
                     "best_epoch": trial.best_epoch, "checkpoint": trial.checkpoint_path, **metrics})
        print(f"trial {trial.trial_id}: test sampled hr@10 {metrics['test']['sampled']['hr@10']:.4f} "
              f"ndcg@10 {metrics['test']['sampled']['ndcg@10']:.4f}; full hr@10 {metrics['test']['full']['hr@10']:.4f}",
              flush=True)
    for name in BASELINES:
        config = replace(defaults(name), max_epochs=settings["max_epochs"], seed=settings["seed"])
        final = Trainer(config, dataset).fit().final
        rows.append({"model": {"pop": "popularity", "bpr": "BPR-MF", "cml": "CML"}[name], "valid": final["valid"],
                     "test": final["test"]})
        print(f"{name}: test sampled hr@10 {final['test']['sampled']['hr@10']:.4f}", flush=True)

    out = Path(args.out) if args.out else REPO / "results" / experiment.name
    searched = list(settings["space"])
    table = experiment.table()
    order = {trial.trial_id: i for i, trial in enumerate(experiment.analysis.trials)}
    table["trial_order"] = table["trial_id"].map(order)
    write_tables(out, table.drop(columns="trial_order"), {**rows[0]["config"], "trial": rows[0]["trial"],
                                                          "valid": rows[0]["valid"], "test": rows[0]["test"]})
    found = importances(table, searched)
    write_summary(out, settings, rows, searched, found)
    popularity = next(row for row in rows if row["model"] == "popularity")["valid"]["sampled"]["ndcg@10"]
    write_plots(out, table, searched, popularity)
    (out / "evaluation.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"wrote {out}/summary.md, trials.csv, best_config.json, evaluation.json and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
