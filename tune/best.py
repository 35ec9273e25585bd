"""Evaluate an LRML search's best checkpoint beside CML and BPR-MF searched on the same budget.

The comparison is written under results/<experiment>/.

    python tune/best.py results/ray/ml-latest-small-lrml            # or an s3:// / gs:// URI, or just the name
    python tune/best.py ml-latest-small-lrml --tune-baselines       # search CML and BPR-MF first if not yet done
    python tune/best.py ml-latest-small-lrml --recommend 414        # top-10 films for MovieLens user 414

Every model is loaded from its checkpoint with lrml alone and evaluated on the test split in
both protocols (sampled candidates and full ranking), with 95% bootstrap intervals over test
users, a paired randomisation test against LRML, and its configuration retrained with 5 fresh
seeds. Popularity is the floor.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrml import checkpoint, cli
from lrml.data import Dataset, load_dataset, prepare
from lrml.errors import UserError
from lrml.evaluate import Evaluator
from lrml.train import Trainer, defaults
from lrml_tune import compare, search
from lrml_tune.experiment import Experiment
from lrml_tune.report import write_plots, write_summary
from lrml_tune.settings import SearchRecord

RESULTS = Path("results")  # under the folder best.py is run from (the clone's root)


def resolve(location: str) -> str:
    """A path, a URI, or the name of an experiment under results/ray/."""
    if "://" in location or Path(location).exists():
        return location
    candidate = (RESULTS / "ray" / location).resolve()
    if candidate.exists():
        return str(candidate)
    raise UserError(f"no experiment at {location!r} (nor {candidate})")


def recommend(model, dataset: Dataset, raw_user: int, k: int = 10) -> list[tuple[int, str]]:
    """Top-k (raw item id, title) for a MovieLens user id, excluding everything they already rated."""
    matches = np.flatnonzero(dataset.user_raw_ids == raw_user)
    if len(matches) == 0:
        raise UserError(f"user {raw_user} is not in {dataset.manifest['dataset']}")
    user = int(matches[0])
    seen = np.concatenate([dataset.train_items[dataset.train_users == user],
                           dataset.valid_items[dataset.valid_users == user], dataset.test_items[dataset.test_users == user]])
    top = model.recommend(torch.tensor([user]), k=k, exclude=[seen])[0].tolist()
    return [(int(dataset.item_raw_ids[i]), dataset.item_titles[i] or "") for i in top]


def recorded_dataset(record: SearchRecord, data_dir: str | None) -> Dataset:
    """The dataset the search ran on, from where it read it or from ``data_dir``, checked by fingerprint."""
    data_dir = data_dir or record.settings.data_dir
    if data_dir and not Path(data_dir).exists():
        raise UserError(f"the search read {record.settings.dataset} from {data_dir}, which is not on this machine: "
                        "pass --data-dir with its archive or folder")
    dataset = load_dataset(prepare(record.settings.dataset, data_dir, progress=False))
    if dataset.fingerprint != record.fingerprint:
        raise UserError(f"the dataset at {dataset.path} has fingerprint {dataset.fingerprint}; the search ran on "
                        f"{record.fingerprint} (another release, file or split?)")
    return dataset


def best_model(experiment: Experiment, dataset: Dataset, scratch: Path):
    """The best trial of ``experiment``, its model (from the checkpoint alone) and its training config."""
    if not experiment.trials:
        raise UserError(f"{experiment.location}: no trial reported validation metrics yet")
    trial = experiment.trials[0]
    model, saved = checkpoint.load(experiment.fetch_checkpoint(trial, scratch), expected_fingerprint=dataset.fingerprint)
    return trial, model, saved["train_config"]


def baseline_searches(lrml: Experiment, tune_missing: bool) -> dict[str, Experiment]:
    """The CML and BPR-MF searches with LRML's budget, found beside it or (``tune_missing``) run now."""
    found = {}
    for model in compare.BASELINES:
        args = compare.baseline_search_args(lrml.location, lrml.record, model)
        location = compare.find_baseline(lrml.location, lrml.record, model)
        if location is None and tune_missing:
            print(f"searching {compare.LABELS[model]} with the LRML search's budget", flush=True)
            if search.run(args) != 0:
                raise UserError(f"the {compare.LABELS[model]} search did not finish")
            location = compare.find_baseline(lrml.location, lrml.record, model)
        if location is None:
            command = " ".join(["python tune/search.py", *args])
            print(f"no {compare.LABELS[model]} search with this budget beside {lrml.location}; left out. "
                  f"Run: {command}  (or pass --tune-baselines)", file=sys.stderr, flush=True)
        else:
            found[model] = Experiment(location)
    return found


def run(argv: list[str]) -> int:
    """The command without the error handling of ``main``."""
    parser = argparse.ArgumentParser(prog="python tune/best.py", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="LRML experiment folder, s3:// or gs:// URI, or name under results/ray/")
    parser.add_argument("--tune-baselines", action="store_true",
                        help="search CML and BPR-MF with the LRML search's budget where no such search exists yet")
    parser.add_argument("--seeds", type=int, choices=(0, len(compare.RETRAIN_SEEDS)), default=len(compare.RETRAIN_SEEDS),
                        help="retrain each best configuration with 5 fresh seeds (default), or 0 to skip")
    parser.add_argument("--data-dir", help="the dataset's archive or folder, if not where the search found it")
    parser.add_argument("--recommend", type=int, metavar="USER_ID", help="print this MovieLens user's top-10 films and stop")
    parser.add_argument("--out", help="results folder (default results/<experiment name>)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    args = parser.parse_args(argv)

    location = resolve(args.experiment)
    record = SearchRecord.read(location)
    if record.settings.model != "lrml":
        raise UserError(f"{location} is a {record.settings.model} search; best.py starts from an LRML search")
    dataset = recorded_dataset(record, args.data_dir)
    lrml = Experiment(location)
    with tempfile.TemporaryDirectory(prefix="lrml-best-") as scratch:  # checkpoints are copied here to load
        if args.recommend is not None:
            for raw_id, title in recommend(best_model(lrml, dataset, Path(scratch))[1], dataset, args.recommend):
                print(f"{raw_id:>7}  {title}")
            return 0
        searches = {"lrml": lrml, **baseline_searches(lrml, args.tune_baselines)}
        evaluator = Evaluator(dataset)
        results = []
        for model, experiment in searches.items():
            trial, network, config = best_model(experiment, dataset, Path(scratch))
            results.append(compare.evaluate(network, evaluator, model, experiment.location, trial.trial_id, config))
            print(f"{compare.LABELS[model]} (trial {trial.trial_id}): test sampled ndcg@10 "
                  f"{results[-1].test['sampled']['ndcg@10']['mean']:.4f}", flush=True)
    popularity = Trainer(defaults("pop"), dataset)
    popularity.fit(final_eval=False)
    results.append(compare.evaluate(popularity.model, evaluator, "pop", None, None, {}))
    compare.add_paired_tests(results)
    if args.seeds:
        print(f"retraining {len(results) - 1} configurations with seeds {list(compare.RETRAIN_SEEDS)}", flush=True)
        compare.add_seed_runs(results, str(dataset.path))

    out = Path(args.out) if args.out else RESULTS / lrml.name
    out.mkdir(parents=True, exist_ok=True)
    trials = pd.concat([experiment.table().assign(model=model) for model, experiment in searches.items()])
    trials.to_csv(out / "trials.csv", index=False, float_format="%.6g")
    (out / "best_config.json").write_text(json.dumps({r.model: r.config for r in results if r.config}, indent=2) + "\n")
    (out / "evaluation.json").write_text(json.dumps(
        [{k: v for k, v in asdict(r).items() if k != "per_user"} for r in results], indent=2) + "\n")
    write_summary(out, {model: experiment.record for model, experiment in searches.items()}, results, lrml.table())
    write_plots(out, searches, results)
    print(f"wrote {out}/summary.md, trials.csv, best_config.json, evaluation.json and plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``tune/best.py`` and ``lrml-best``: a mistake in the arguments is one line, not a traceback."""
    return cli.run(run, argv, "best.py")


if __name__ == "__main__":
    sys.exit(main())
