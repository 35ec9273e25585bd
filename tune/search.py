"""Search a model's hyperparameters with Ray Tune and Optuna, stopping weak trials early.

    python tune/search.py --num-samples 64                       # local Ray, bundled ml-latest-small, LRML
    python tune/search.py --model bpr --num-samples 64           # a baseline, searched with the same budget
    python tune/search.py --dataset ml-100k --data-dir DIR --num-samples 16
    python tune/search.py --address auto --storage-path s3://bucket/lrml --workers-per-trial 2 --gpus-per-worker 1 \
        --concurrency 4         # a cluster that autoscales from zero: how many trials at once

It ends by printing the best trial's hyperparameters, validation metrics and checkpoint; then
``python tune/best.py <experiment>`` evaluates the best checkpoints on the test split.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lrml_tune.experiment import best_epoch_row, valid_metrics
from lrml.data import Dataset, SplitParams, get_release, load_dataset, prepare
from lrml.distributed import DatasetRef, TrialSpec, run_trial
from lrml.train import MODELS, MONITOR, defaults
from lrml_tune.resources import plan_resources
from lrml_tune.searcher import StudySearcher, create_study
from lrml_tune.settings import SearchOutcome, SearchRecord, SearchSettings
from lrml_tune.space import default_space_file, load_space, starting_points
from lrml_tune.strategy import DEFAULT_SCHEDULER, DEFAULT_SEARCHER, SCHEDULERS, SEARCHERS, make_sampler, make_scheduler

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = REPO / "results" / "ray"
SEARCHABLE_MODELS = tuple(model for model in MODELS if model != "pop")
# Ray swaps 127.0.0.1 for the machine's network address; on Linux every 127.x.y.z is loopback, so a
# local search registers on 127.0.0.2 and listens on nothing outside the machine. Elsewhere
# (macOS has only 127.0.0.1), Ray chooses.
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else None


def parse_args(argv: list[str] | None = None) -> tuple[SearchSettings, bool]:
    """The search's settings from the command line, and whether to resume; ``--resume`` reads them back instead."""
    parser = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=64, help="trials to run (default 64)")
    parser.add_argument("--model", choices=SEARCHABLE_MODELS, default="lrml", help="the model to tune (default lrml)")
    parser.add_argument("--dataset", default="ml-latest-small", help="MovieLens release (default: the bundled ml-latest-small)")
    parser.add_argument("--data-dir", help="the release's archive or extracted folder (default: bundled copy or download)")
    parser.add_argument("--max-epochs", type=int, default=20, help="epochs a trial may train if not stopped (default 20)")
    parser.add_argument("--searcher", choices=SEARCHERS, default=DEFAULT_SEARCHER,
                        help=f"how configurations are proposed (default {DEFAULT_SEARCHER})")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=DEFAULT_SCHEDULER,
                        help=f"how weak trials are stopped early (default {DEFAULT_SCHEDULER})")
    parser.add_argument("--grace-period", type=int, default=2, help="epochs every trial gets before it may be stopped")
    parser.add_argument("--address", help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray")
    parser.add_argument("--storage-path", help=f"where trials and checkpoints go: a folder, s3:// or gs:// (default {DEFAULT_STORAGE})")
    parser.add_argument("--name", help="experiment name (default: <dataset>-<model>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted search --name in --storage-path, with the settings it started with")
    parser.add_argument("--seed", type=int, default=0, help="seeds the searcher and every trial's training")
    parser.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (data parallel)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int,
                        help="trials at once (default: as many as the cluster holds now; set it on a cluster that "
                             "autoscales, which then adds the nodes these trials need)")
    parser.add_argument("--space", help="search space JSON (default tune/spaces/<model>.json)")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="restarts of a trial after a worker or node fails, from its last checkpoint (default 2)")
    parser.add_argument("--node-ip-address", help="this machine's address in the cluster, if Ray picks the wrong one")
    args = parser.parse_args(argv)
    storage = args.storage_path or str(DEFAULT_STORAGE)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # Tune needs it absolute
    name = args.name or f"{args.dataset}-{args.model}"
    if args.resume:
        recorded = SearchRecord.read(f"{storage.rstrip('/')}/{name}").settings
        return replace(recorded, address=args.address, node_ip_address=args.node_ip_address), True
    space_file = args.space or str(default_space_file(args.model))
    settings = SearchSettings(
        name=name, storage_path=storage, dataset=args.dataset,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None, model=args.model,
        num_samples=args.num_samples, max_epochs=args.max_epochs, grace_period=args.grace_period,
        searcher=args.searcher, scheduler=args.scheduler, seed=args.seed, space_file=space_file,
        space=load_space(space_file), workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, concurrency=args.concurrency, max_failures=args.max_failures,
        address=args.address, node_ip_address=args.node_ip_address)
    check_settings(settings)
    return settings, False


def check_settings(settings: SearchSettings) -> None:
    """Refuse settings that cannot work, naming the value, before Ray starts."""
    for flag, value in (("--num-samples", settings.num_samples), ("--max-epochs", settings.max_epochs),
                        ("--grace-period", settings.grace_period), ("--workers-per-trial", settings.workers_per_trial)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1; got {value}")
    if settings.grace_period > settings.max_epochs:
        raise ValueError(f"--grace-period {settings.grace_period} is longer than --max-epochs {settings.max_epochs}")
    get_release(settings.dataset)  # an unknown dataset names the known ones
    if settings.data_dir and not Path(settings.data_dir).exists():
        raise ValueError(f"--data-dir {settings.data_dir}: no such file or folder")
    if SearchRecord.exists(settings.experiment):
        raise ValueError(f"{settings.experiment} already holds a search: pass --resume to continue it, or another "
                         "--name")


def connect(settings: SearchSettings) -> None:
    """Join the cluster at ``settings.address``, or start a local Ray that listens on loopback only."""
    runtime_env = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}}
    if settings.address:
        ray.init(address=settings.address, runtime_env=runtime_env, _node_ip_address=settings.node_ip_address)
    else:
        ray.init(_node_ip_address=settings.node_ip_address or LOCAL_NODE_IP, include_dashboard=True,
                 runtime_env=runtime_env)


def check_storage(storage_path: str, given: bool) -> None:
    """On a cluster of several nodes, refuse storage that some node cannot reach."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    if not given:
        raise ValueError(f"this Ray cluster has {len(nodes)} nodes: pass --storage-path that every node can reach "
                         "(s3://bucket/path, gs://bucket/path, or a folder on a mount all nodes share)")
    if "://" in storage_path:
        return
    marker = Path(storage_path) / f".lrml-storage-check-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by tune/search.py to check that every node sees this folder\n")
    try:
        seen = ray.get([_exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                        .remote(str(marker)) for node in nodes])
    finally:
        marker.unlink()
    blind = [node["NodeManagerAddress"] for node, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ValueError(f"--storage-path {storage_path} is not visible on node(s) {', '.join(blind)}: use a shared "
                         "mount, s3:// or gs://")


@ray.remote(num_cpus=0)
def _exists(path: str) -> bool:
    return os.path.exists(path)


def trial_spec(settings: SearchSettings, dataset: Dataset) -> TrialSpec:
    """What every trial shares: the model's defaults with this search's budget and seed, the dataset, resources."""
    base = replace(defaults(settings.model), max_epochs=settings.max_epochs, seed=settings.seed)
    return TrialSpec(base, DatasetRef(str(dataset.path), settings.dataset, settings.data_dir, dataset.fingerprint),
                     workers=settings.workers_per_trial, cpus_per_worker=settings.cpus_per_worker,
                     gpus_per_worker=settings.gpus_per_worker, ray_train=settings.workers_per_trial > 1,
                     train_storage=f"{settings.experiment}/train", max_failures=settings.max_failures)


def build_tuner(settings: SearchSettings, spec: TrialSpec, concurrency: int, resume: bool) -> tune.Tuner:
    """The Tuner: the chosen searcher over an Optuna study, the chosen scheduler, one trial per configuration."""
    # trials of several workers share one read of train.parquet through Ray Data; one-worker trials read the folder
    train_data = (ray.data.read_parquet(f"{spec.dataset.path}/train.parquet").materialize() if spec.ray_train else None)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec, train_data=train_data),
                                    spec.trial_resources)
    if resume:
        if not tune.Tuner.can_restore(settings.experiment):
            raise ValueError(f"--resume: no search to resume at {settings.experiment}")
        return tune.Tuner.restore(settings.experiment, trainable=trainable, resume_unfinished=True,
                                  restart_errored=True)
    study = create_study(settings.experiment, settings.name, make_sampler(settings.searcher, settings.seed))
    searcher = StudySearcher(settings.space, study, MONITOR, "max", starting_points(settings.model, settings.space))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=MONITOR, mode="max", search_alg=searcher, num_samples=settings.num_samples,
            scheduler=make_scheduler(settings.scheduler, settings.max_epochs, settings.grace_period),
            max_concurrent_trials=concurrency,
            # a trial that trains in its own process ends cleanly when stopped, so Tune can hand the process on
            reuse_actors=not spec.ray_train),
        run_config=tune.RunConfig(
            name=settings.name, storage_path=settings.storage_path, verbose=1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=MONITOR,
                                                    checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures)))


def summarize(results: tune.ResultGrid, wall_seconds: float, search_started_at: float, search_seconds: float,
              concurrency: int) -> SearchOutcome:
    """The best trial over all its epochs, and how the search spent its time."""
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None and MONITOR in r.metrics_dataframe]
    best = results.get_best_result(metric=MONITOR, mode="max", scope="all")
    best_row = best_epoch_row(best.metrics_dataframe)
    return SearchOutcome(
        trials=len(results), errors=results.num_errors, epochs_trained=int(sum(len(f) for f in frames)),
        wall_seconds=round(wall_seconds, 1), search_started_at=search_started_at, search_seconds=round(search_seconds, 1),
        training_seconds=round(sum(float(frame["seconds"].sum()) for frame in frames), 1), concurrency=concurrency,
        best_trial=str(best_row["trial_id"]), best_config=best.config, best_epoch=int(best_row["epoch"]),
        best_valid=valid_metrics(best_row))


def main(argv: list[str] | None = None) -> int:
    settings, resume = parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # a Ray Train run notices its end in 0.5 s, not 2
    started = time.perf_counter()
    dataset = load_dataset(prepare(settings.dataset, settings.data_dir, params=SplitParams()))
    counts = dataset.manifest["counts"]
    print(f"{settings.dataset}: {counts['users']} users, {counts['items']} items, {counts['train']} training pairs",
          flush=True)
    connect(settings)
    try:
        check_storage(settings.storage_path, settings.storage_path != str(DEFAULT_STORAGE))
        plan = plan_resources(ray.cluster_resources(), settings.workers_per_trial, settings.cpus_per_worker,
                              settings.gpus_per_worker, settings.concurrency)
        print(f"{settings.model}: {settings.searcher} searcher, {settings.scheduler} scheduler; {plan.concurrency} "
              f"trial(s) at a time, each {settings.workers_per_trial} worker(s) x {settings.cpus_per_worker:g} CPU"
              f"{f' x {settings.gpus_per_worker:g} GPU' if settings.gpus_per_worker else ''}; "
              f"experiment {settings.experiment}", flush=True)
        if plan.fits_now < plan.concurrency:
            print(f"the cluster holds {plan.fits_now} such trial(s) now; the rest, and reading the data, "
                  "wait for the autoscaler", flush=True)
        spec = trial_spec(settings, dataset)
        tuner = build_tuner(settings, spec, plan.concurrency, resume)
        record = SearchRecord(settings, str(dataset.path), dataset.fingerprint)
        if not resume:
            record.write()
        search_started, search_started_at = time.perf_counter(), time.time()
        results = tuner.fit()
        now = time.perf_counter()
        outcome = summarize(results, now - started, search_started_at, now - search_started, plan.concurrency)
        replace(record, outcome=outcome).write()
    finally:
        ray.shutdown()
    print(f"\nbest trial {outcome.best_trial}: {json.dumps(outcome.best_config)}")
    print("validation (sampled, best epoch {}): {}".format(
        outcome.best_epoch, ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in outcome.best_valid.items())))
    print(f"{outcome.trials} trials ({outcome.errors} errors), {outcome.epochs_trained} epochs in "
          f"{outcome.wall_seconds:.0f}s ({outcome.search_seconds:.0f}s searching); {outcome.concurrency} trial(s) at a "
          f"time spent {100 * outcome.training_share:.0f}% of their time inside training epochs")
    print(f"next: python tune/best.py {settings.experiment}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
