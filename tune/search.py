"""Search LRML's hyperparameters with Ray Tune + Optuna (TPE) and ASHA, each trial a Ray Train run.

    python tune/search.py --num-samples 64                       # local Ray, bundled ml-latest-small
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
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # notice a finished trial in 0.5 s, not 2 s

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from lrml.data import Dataset, SplitParams, load_dataset, prepare  # noqa: E402
from lrml.distributed import TrialSettings, run_trial  # noqa: E402
from lrml.train import MONITOR, defaults  # noqa: E402
from experiment import best_epoch_row, valid_metrics, write_search_file  # noqa: E402
from resources import TRIAL_RESOURCES, plan_resources  # noqa: E402
from space import DEFAULT_SPACE, load_space, starting_points, tune_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = REPO / "results" / "ray"
# Ray swaps 127.0.0.1 for the machine's network address; on Linux every 127.x.y.z is loopback, so a
# local search registers on 127.0.0.2 and listens on nothing outside the machine. Elsewhere
# (macOS has only 127.0.0.1), Ray chooses.
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=64, help="trials to run (default 64)")
    parser.add_argument("--dataset", default="ml-latest-small", help="MovieLens release (default: the bundled ml-latest-small)")
    parser.add_argument("--data-dir", help="the release's archive or extracted folder (default: bundled copy or download)")
    parser.add_argument("--max-epochs", type=int, default=20, help="epochs a trial may train if ASHA keeps it (default 20)")
    parser.add_argument("--address", help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray")
    parser.add_argument("--storage-path", help=f"where trials and checkpoints go: a folder, s3:// or gs:// (default {DEFAULT_STORAGE})")
    parser.add_argument("--name", help="experiment name (default: <dataset>-lrml)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search --name in --storage-path")
    parser.add_argument("--seed", type=int, default=0, help="seeds Optuna's TPE and every trial's training")
    parser.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (data parallel)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int,
                        help="trials at once (default: as many as the cluster holds now; set it on a cluster that "
                             "autoscales, which then adds the nodes these trials need)")
    parser.add_argument("--space", default=str(DEFAULT_SPACE), help="search space JSON (default tune/space.json)")
    parser.add_argument("--grace-period", type=int, default=2, help="epochs every trial gets before ASHA may stop it")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="restarts of a trial after a worker or node fails, from its last checkpoint (default 2)")
    parser.add_argument("--node-ip-address", help="this machine's address in the cluster, if Ray picks the wrong one")
    args = parser.parse_args(argv)
    args.name = args.name or f"{args.dataset}-lrml"
    args.storage_given = args.storage_path is not None
    args.storage_path = args.storage_path or str(DEFAULT_STORAGE)
    if "://" not in args.storage_path:
        args.storage_path = str(Path(args.storage_path).expanduser().resolve())  # Tune needs it absolute
    return args


def connect(address: str | None, node_ip_address: str | None) -> None:
    """Join the cluster at ``address``, or start a local Ray that listens on loopback only."""
    runtime_env = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, _node_ip_address=node_ip_address)
    else:
        ray.init(_node_ip_address=node_ip_address or LOCAL_NODE_IP, include_dashboard=True, runtime_env=runtime_env)


def check_storage(storage_path: str, given: bool) -> None:
    """On a cluster of several nodes, refuse storage that some node cannot reach."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    if not given:
        sys.exit(f"this Ray cluster has {len(nodes)} nodes: pass --storage-path that every node can reach "
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
        sys.exit(f"--storage-path {storage_path} is not visible on node(s) {', '.join(blind)}: use a shared mount, "
                 "s3:// or gs://")


@ray.remote(num_cpus=0)
def _exists(path: str) -> bool:
    return os.path.exists(path)


def build_tuner(args: argparse.Namespace, dataset: Dataset, experiment: str) -> tuple[tune.Tuner, int]:
    """The Tuner (Optuna TPE from the published starting points, ASHA on validation nDCG@10 each epoch)
    and how many trials it runs at once."""
    spec = load_space(args.space)
    try:
        plan = plan_resources(ray.cluster_resources(), args.workers_per_trial, args.cpus_per_worker,
                              args.gpus_per_worker, args.concurrency)
    except ValueError as error:
        sys.exit(f"search.py: {error}")
    print(f"{plan.concurrency} trial(s) at a time, each {plan.workers} worker(s) x {plan.cpus_per_worker:g} CPU"
          f"{f' x {plan.gpus_per_worker:g} GPU' if plan.gpus_per_worker else ''}; experiment {experiment}", flush=True)
    if plan.fits_now < plan.concurrency:
        print(f"the cluster holds {plan.fits_now} such trial(s) now; the rest, and reading the data, "
              "wait for the autoscaler", flush=True)
    fixed = asdict(replace(defaults("lrml"), max_epochs=args.max_epochs, seed=args.seed))
    fixed = {name: value for name, value in fixed.items() if name not in spec}
    settings = TrialSettings(str(dataset.path), args.dataset, args.data_dir, dataset.fingerprint, fixed, plan.workers,
                             plan.worker_resources, plan.gpus_per_worker > 0, plan.torch_threads,
                             f"{experiment}/train", args.max_failures)
    # every trial trains on the same rows: read train.parquet once, not once per trial
    train_data = ray.data.read_parquet(str(dataset.path / "train.parquet")).materialize()
    trainable = tune.with_resources(tune.with_parameters(run_trial, train_data=train_data, settings=settings),
                                    TRIAL_RESOURCES)
    if args.resume:
        if not tune.Tuner.can_restore(experiment):
            sys.exit(f"--resume: no search to resume at {experiment}")
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                  restart_errored=True), plan.concurrency
    searcher = OptunaSearch(points_to_evaluate=starting_points(spec), sampler=optuna.samplers.TPESampler(seed=args.seed))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=args.max_epochs,
                              grace_period=min(args.grace_period, args.max_epochs), reduction_factor=3)
    tuner = tune.Tuner(
        trainable, param_space=tune_space(spec),
        tune_config=tune.TuneConfig(metric=MONITOR, mode="max", search_alg=searcher, scheduler=scheduler,
                                    num_samples=args.num_samples, max_concurrent_trials=plan.concurrency,
                                    reuse_actors=False),  # a trial ASHA stopped mid-run cannot be reused
        run_config=tune.RunConfig(name=args.name, storage_path=args.storage_path, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    return tuner, plan.concurrency


def summarize(results: tune.ResultGrid, wall_seconds: float, concurrency: int) -> dict:
    """The best trial over all its epochs, and how the search spent its time."""
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None and MONITOR in r.metrics_dataframe]
    best = results.get_best_result(metric=MONITOR, mode="max", scope="all")
    best_row = best_epoch_row(best.metrics_dataframe)
    training = sum(float(frame["seconds"].sum()) for frame in frames)
    return {
        "best_config": best.config,
        "best_valid": valid_metrics(best_row),
        "best_epoch": int(best_row["epoch"]),
        "best_checkpoint": best_row.get("checkpoint_path"),
        "trials": len(results), "errors": results.num_errors, "epochs_trained": int(sum(len(f) for f in frames)),
        "wall_seconds": round(wall_seconds, 1), "training_seconds": round(training, 1),
        "concurrency": concurrency,
        # of the time the trial slots were open (wall time x trials at once), the share spent in epochs
        "training_share": round(training / (wall_seconds * concurrency), 3) if wall_seconds else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    dataset = load_dataset(prepare(args.dataset, args.data_dir, params=SplitParams()))
    counts = dataset.manifest["counts"]
    print(f"{args.dataset}: {counts['users']} users, {counts['items']} items, {counts['train']} training pairs", flush=True)
    experiment = f"{args.storage_path.rstrip('/')}/{args.name}"
    settings = {"dataset": args.dataset, "data_dir": args.data_dir, "dataset_path": str(dataset.path),
                "experiment": experiment, "max_epochs": args.max_epochs, "seed": args.seed,
                "workers_per_trial": args.workers_per_trial, "num_samples": args.num_samples, "space": load_space(args.space)}
    connect(args.address, args.node_ip_address)
    try:
        check_storage(args.storage_path, args.storage_given)
        tuner, concurrency = build_tuner(args, dataset, experiment)
        if not args.resume:
            write_search_file(experiment, settings)
        results = tuner.fit()
        summary = {**settings, **summarize(results, time.perf_counter() - started, concurrency)}
        write_search_file(experiment, summary)
    finally:
        ray.shutdown()
    print(f"\nbest trial: {json.dumps(summary['best_config'])}")
    print("validation (sampled, best epoch {}): {}".format(
        summary["best_epoch"], ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in summary["best_valid"].items())))
    print(f"checkpoint: {summary['best_checkpoint']}")
    print(f"{summary['trials']} trials ({summary['errors']} errors), {summary['epochs_trained']} epochs in "
          f"{summary['wall_seconds']:.0f}s; {summary['concurrency']} trial(s) at a time spent "
          f"{100 * (summary['training_share'] or 0):.0f}% of their time inside training epochs")
    print(f"next: python tune/best.py {summary['experiment']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
