"""Evaluate an LRML search's chosen model beside CML and BPR-MF searched on the same budget, EASE tuned on
validation, and popularity; each searched model also beside its own defaults trained to convergence.

The comparison is written under results/<experiment>/.

    python tune/best.py results/ray/ml-latest-small-lrml            # or an s3:// / gs:// URI, or just the name
    python tune/best.py ml-latest-small-lrml --tune-baselines       # search CML and BPR-MF first if not yet done
    python tune/best.py ml-latest-small-lrml --recommend 414        # top-10 films for MovieLens user 414
    python tune/best.py ml-latest-small-lrml --address auto          # retrain and rank on the search's Ray cluster
    python tune/best.py ml-20m-lrml --ray-data 10.0.0.5:6379         # rank users on a Ray cluster, through Ray Data

Each search's top configurations are retrained with fresh seeds and the best mean validation score
is chosen; its checkpoint is loaded with lrml alone and evaluated on the test split in both
protocols (sampled candidates and full ranking), with 95% bootstrap intervals over test users and
paired randomisation tests between every two models.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrml import cli
from lrml.data import Dataset, load_dataset, prepare
from lrml.errors import UserError
from lrml.evaluate import Evaluator
from lrml.train import TrainConfig, Trainer, defaults
from lrml_tune import sweep
from lrml_tune.comparison import selection
from lrml_tune.comparison.baseline_searches import BASELINES, baseline_settings, find_baseline
from lrml_tune.comparison.cluster_runs import RaySolves, RayTasks
from lrml_tune.comparison.ease_grid import fits_in_memory, tune_ease
from lrml_tune.comparison.model_result import LABELS, ModelResult, add_paired_tests, evaluate, per_user_table
from lrml_tune.comparison.ray_data_ranking import RayDataEvaluator, evaluation_cluster
from lrml_tune.comparison.report import write_plots, write_summary
from lrml_tune.comparison.retrain import LocalProcesses, Runner, RunStore, kept_runs
from lrml_tune.sweep import Experiment, SearchRecord
from lrml_tune.sweep.storage import is_uri
from lrml_tune.sweep.trainable import DatasetRef

RESULTS = Path("results")  # under the folder best.py is run from (the clone's root)
CANDIDATES = 3  # top configurations of each search retrained to choose from


def resolve(location: str) -> str:
    """A path, a URI, or the name of an experiment under results/ray/."""
    if is_uri(location) or Path(location).exists():
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
    """The model of the search's best trial by validation, from its checkpoint alone."""
    if not experiment.trials:
        raise UserError(f"{experiment.location}: no trial reported validation metrics yet")
    return selection.load_trial(experiment, experiment.trials[0].trial_id, dataset.fingerprint, scratch)


def baseline_searches(lrml: Experiment, tune_missing: bool) -> dict[str, Experiment]:
    """The CML and BPR-MF searches with LRML's budget, found beside it or (``tune_missing``) run now."""
    found = {}
    for model in BASELINES:
        settings = baseline_settings(lrml.location, lrml.record, model)
        location = find_baseline(lrml.location, lrml.record, model)
        if location is None and tune_missing:
            print(f"searching {LABELS[model]} with the LRML search's budget", flush=True)
            if sweep.run(settings) != 0:
                raise UserError(f"the {LABELS[model]} search did not finish")
            location = find_baseline(lrml.location, lrml.record, model)
        if location is None:
            print(f"no {LABELS[model]} search with this budget beside {lrml.location}; left out. "
                  f"Run: {settings.command_line()}  (or pass --tune-baselines)", file=sys.stderr, flush=True)
        else:
            found[model] = Experiment(location)
    return found


def searched_result(model: str, experiment: Experiment, dataset: Dataset, evaluator: Evaluator, candidates: int,
                    defaults_epochs: int | None, scratch: Path, store: RunStore, runner: Runner) -> ModelResult:
    """A searched model's chosen checkpoint evaluated, with how it was chosen and its defaults trained for
    ``defaults_epochs`` (None: no retraining at all, the search's best trial is evaluated alone)."""
    settings = experiment.record.settings
    retrain = defaults_epochs is not None
    if retrain:
        found = selection.candidates(experiment, candidates, str(dataset.path), store, runner)
    else:
        top = experiment.trials[0]
        found = [selection.Candidate(top.trial_id, top.config, top.valid[experiment.monitor], {})]
    chosen = found[0]
    network = selection.load_trial(experiment, chosen.trial, dataset.fingerprint, scratch)
    result = evaluate(network, evaluator, model, experiment.name, chosen.trial, chosen.config)
    result.candidates = found if retrain else []
    result.notes = selection.notes_for(experiment, chosen)
    if retrain:
        result.defaults = selection.defaults_runs(model, defaults_epochs, max(settings.patience, TrainConfig.patience),
                                                  settings.metric, str(dataset.path), store, runner)
    return result


def ease_result(dataset: Dataset, evaluator: Evaluator, protocol: str, solves=None) -> ModelResult | None:
    """EASE with its weight tuned on validation nDCG@10 in ``protocol`` (each weight solved by ``solves``: by
    default here), beside one fit of its default weight; None, saying why, when its items x items matrices do not
    fit in this machine's memory."""
    too_large = fits_in_memory(dataset)
    if too_large:
        print(f"EASE left out: {too_large}", file=sys.stderr, flush=True)
        return None
    print(f"EASE: searching its weight on validation ({protocol})", flush=True)
    model, grid = tune_ease(dataset, evaluator, solves, protocol)
    result = evaluate(model, evaluator, "ease", "best.py", None, {"reg_weight": grid.best})
    result.tried = grid.tried
    if grid.edge():
        result.notes.append(f"reg_weight={grid.best:g} is the {grid.edge()} weight tried: a wider grid may do better")
    default = Trainer(defaults("ease"), dataset)
    default.fit(final_eval=False)
    result.defaults = {"config": asdict(defaults("ease")), "valid": evaluator.evaluate(default.model, "valid"),
                       "test": {protocol: {metric: {"mean": value} for metric, value in metrics.items()}
                                for protocol, metrics in evaluator.evaluate(default.model, "test").items()}}
    return result


def cluster_dataset(record: SearchRecord, dataset: Dataset, data_dir: str | None) -> DatasetRef:
    """How the cluster's nodes find the search's dataset: this machine's folder, or prepared where it is missing."""
    return DatasetRef(str(dataset.path), record.settings.dataset, data_dir or record.settings.data_dir,
                      record.fingerprint)


def run(argv: list[str]) -> int:
    """The command without the error handling of ``main``."""
    parser = argparse.ArgumentParser(prog="python tune/best.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="LRML experiment folder, s3:// or gs:// URI, or name under results/ray/")
    parser.add_argument("--tune-baselines", action="store_true",
                        help="search CML and BPR-MF with the LRML search's budget where no such search exists yet")
    parser.add_argument("--candidates", type=int, default=CANDIDATES,
                        help=f"top configurations of each search retrained to choose from (default {CANDIDATES})")
    parser.add_argument("--defaults-epochs", type=int,
                        help="epochs each model's defaults may train to converge (default: the search's --max-epochs "
                             f"or {TrainConfig.max_epochs}, whichever is larger)")
    parser.add_argument("--no-retrain", action="store_true",
                        help="evaluate each search's best checkpoint only: no retraining, no defaults")
    parser.add_argument("--address", help="the Ray cluster the search ran on (host:port, or auto on its head node): "
                        "retrain, train the defaults, solve EASE's weights and rank users there, as Ray tasks and "
                        "Ray Data (default: processes of this machine)")
    parser.add_argument("--ray-data", nargs="?", const="local", metavar="ADDRESS",
                        help="rank the searched models' users through Ray Data batch inference, on the Ray cluster at "
                             "ADDRESS (without one, a local Ray on this machine's cores)")
    parser.add_argument("--data-dir", help="the dataset's archive or folder, if not where the search found it")
    parser.add_argument("--recommend", type=int, metavar="USER_ID", help="print this MovieLens user's top-10 films and stop")
    parser.add_argument("--out", help="results folder (default results/<experiment name>)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    args = parser.parse_args(argv)
    for flag, value in (("--candidates", args.candidates), ("--defaults-epochs", args.defaults_epochs or 1)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1; got {value}")
    if args.address and args.ray_data:
        raise UserError("--address ranks users through Ray Data on that cluster already: leave out --ray-data")

    location = resolve(args.experiment)
    record = SearchRecord.read(location)
    if record.settings.model != "lrml":
        raise UserError(f"{location} is a {record.settings.model} search; best.py starts from an LRML search")
    dataset = recorded_dataset(record, args.data_dir)
    lrml = Experiment(location)
    with tempfile.TemporaryDirectory(prefix="lrml-best-") as scratch:  # checkpoints are copied here to load
        if args.recommend is not None:
            for raw_id, title in recommend(best_model(lrml, dataset, Path(scratch)), dataset, args.recommend):
                print(f"{raw_id:>7}  {title}")
            return 0
        searches = {"lrml": lrml, **baseline_searches(lrml, args.tune_baselines)}
        evaluator = Evaluator(dataset)
        results = []
        defaults_epochs = None if args.no_retrain else \
            args.defaults_epochs or max(record.settings.max_epochs, TrainConfig.max_epochs)
        cluster = args.address or args.ray_data
        where = cluster_dataset(record, dataset, args.data_dir) if args.address else None
        with evaluation_cluster(cluster) if cluster else contextlib.nullcontext(), \
                contextlib.nullcontext(RayTasks(where)) if where else LocalProcesses(str(dataset.path)) as runner:
            searched_evaluator = RayDataEvaluator(dataset) if cluster else evaluator
            store = kept_runs()
            for model, experiment in searches.items():
                print(f"{LABELS[model]}: choosing among the search's top {args.candidates} configuration(s)",
                      flush=True)
                results.append(searched_result(model, experiment, dataset, searched_evaluator, args.candidates,
                                               defaults_epochs, Path(scratch), store, runner))
                print(f"{LABELS[model]} (trial {results[-1].trial}): test sampled ndcg@10 "
                      f"{results[-1].test['sampled']['ndcg@10']['mean']:.4f}", flush=True)
            metric = record.settings.metric
            ease = ease_result(dataset, evaluator, metric, RaySolves(dataset, where, metric) if where else None)
    results += [ease] if ease else []
    popularity = Trainer(defaults("pop"), dataset)
    popularity.fit(final_eval=False)
    results.append(evaluate(popularity.model, evaluator, "pop", None, None, {}))
    add_paired_tests(results)

    out = Path(args.out) if args.out else RESULTS / lrml.name
    out.mkdir(parents=True, exist_ok=True)
    trials = pd.concat([experiment.table().assign(model=model) for model, experiment in searches.items()])
    trials.to_csv(out / "trials.csv", index=False, float_format="%.6g")
    (out / "best_config.json").write_text(json.dumps({r.model: r.config for r in results if r.config}, indent=2) + "\n")
    (out / "evaluation.json").write_text(json.dumps([r.as_record() for r in results], indent=2) + "\n")
    per_user_table(results, dataset.user_raw_ids[dataset.test_users]).to_parquet(out / "per_user.parquet",
                                                                                          index=False)
    write_summary(out, {model: experiment.record for model, experiment in searches.items()}, results, lrml.table())
    write_plots(out, searches, results)
    print(f"wrote {out}/summary.md, trials.csv, best_config.json, evaluation.json, per_user.parquet and plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``tune/best.py`` and ``lrml-best``: a mistake in the arguments is one line, not a traceback."""
    return cli.run(run, argv, "best.py")


if __name__ == "__main__":
    sys.exit(main())
