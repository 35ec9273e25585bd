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
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import ray

from lrml import cli
from lrml.data import SplitParams, prepare, read_manifest
from lrml.train import MODELS
from lrml_tune.checks import check_settings, check_storage_shared, storage_warning
from lrml_tune.faults import Reserve, StorageFault, probe, storage_fault
from lrml_tune.local_ray import LOCAL_NODE_IP, exclusive_local_ray
from lrml_tune.resources import plan_resources
from lrml_tune.searcher import STUDY_FILE, repair_journal
from lrml_tune.settings import SearchOutcome, SearchRecord, SearchSettings, is_uri, resolved
from lrml_tune.space import at_edges, default_space_file, load_space
from lrml_tune.strategy import SCHEDULERS, SEARCHERS
from lrml_tune.tuner import build_tuner, finished, summarize, trial_spec
from lrml_tune.watch import LOG_FILE, check_loggers, mlflow_uri, send_ray_output_to

STORAGE_FAULT_STATUS = 74
DEFAULT_STORAGE = Path("results") / "ray"  # under the folder the search is started from (the clone's root)
SEARCHABLE_MODELS = tuple(model for model in MODELS if model not in ("ease", "pop"))  # best.py tunes EASE itself


def parse_args(argv: list[str] | None = None) -> tuple[SearchSettings, bool]:
    """The search's settings from the command line, and whether to resume; ``--resume`` reads them back instead."""
    parser = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.split("\n\n")[0])
    defaults = SearchSettings
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples,
                        help=f"trials to run (default {defaults.num_samples})")
    parser.add_argument("--model", choices=SEARCHABLE_MODELS, default=defaults.model,
                        help=f"the model to tune (default {defaults.model})")
    parser.add_argument("--dataset", default=defaults.dataset,
                        help=f"MovieLens release (default: the bundled {defaults.dataset})")
    parser.add_argument("--data-dir", help="the release's archive or extracted folder (default: bundled copy or download)")
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs,
                        help=f"epochs a trial may train if not stopped (default {defaults.max_epochs})")
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help=f"a trial ends after this many epochs without a better validation nDCG@10 "
                             f"(default {defaults.patience})")
    parser.add_argument("--searcher", choices=SEARCHERS, default=defaults.searcher,
                        help=f"how configurations are proposed (default {defaults.searcher})")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler,
                        help=f"how weak trials are stopped early (default {defaults.scheduler})")
    parser.add_argument("--grace-period", type=int,
                        help=f"epochs every trial gets before it may be stopped (default {defaults.grace_period}, "
                             "or --max-epochs if fewer)")
    parser.add_argument("--address", help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray")
    parser.add_argument("--storage-path",
                        help=f"where trials and checkpoints go: a folder, s3:// or gs:// (default {DEFAULT_STORAGE})")
    parser.add_argument("--name", help="experiment name (default: <dataset>-<model>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted search --name in --storage-path, with the settings it started with")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the searcher and every trial's training")
    parser.add_argument("--workers-per-trial", type=int, default=defaults.workers_per_trial,
                        help="Ray Train workers per trial (data parallel)")
    parser.add_argument("--cpus-per-worker", type=float, default=defaults.cpus_per_worker)
    parser.add_argument("--gpus-per-worker", type=float, default=defaults.gpus_per_worker)
    parser.add_argument("--concurrency", type=int,
                        help="trials at once (default: as many as the cluster holds now; set it on a cluster that "
                             "autoscales, which then adds the nodes these trials need)")
    parser.add_argument("--space", help="search space JSON (default lrml_tune/spaces/<model>.json)")
    parser.add_argument("--max-failures", type=int, default=defaults.max_failures,
                        help=f"restarts of a trial after a worker or node fails, from its last checkpoint "
                             f"(default {defaults.max_failures})")
    parser.add_argument("--worker-start-timeout", type=float, default=defaults.worker_start_timeout,
                        help=f"seconds a trial's Ray Train workers may take to start before the attempt fails "
                             f"(default {defaults.worker_start_timeout:g}; an autoscaling cluster adds nodes meanwhile)")
    parser.add_argument("--node-ip-address", help="this machine's address in the cluster, if Ray picks the wrong one")
    parser.add_argument("--mlflow", nargs="?", const="", metavar="TRACKING_URI",
                        help="log every trial to MLflow (default store: mlflow.db in the experiment folder)")
    parser.add_argument("--wandb", action="store_true", help="log every trial to Weights & Biases (needs wandb)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    args = parser.parse_args(argv)
    storage = resolved(args.storage_path or str(DEFAULT_STORAGE))
    name = args.name or f"{args.dataset}-{args.model}"
    if args.resume:
        recorded = SearchRecord.read(f"{storage.rstrip('/')}/{name}").settings
        return replace(recorded, address=args.address, node_ip_address=args.node_ip_address), True
    space_file = args.space or str(default_space_file(args.model))
    settings = SearchSettings(
        name=name, storage_path=storage, dataset=args.dataset,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None, model=args.model,
        num_samples=args.num_samples, max_epochs=args.max_epochs, patience=args.patience,
        grace_period=min(defaults.grace_period, max(args.max_epochs, 1)) if args.grace_period is None else args.grace_period,
        searcher=args.searcher, scheduler=args.scheduler, seed=args.seed, space_file=space_file,
        space=load_space(space_file), workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, concurrency=args.concurrency, max_failures=args.max_failures,
        worker_start_timeout=args.worker_start_timeout, address=args.address, node_ip_address=args.node_ip_address,
        mlflow=args.mlflow, wandb=args.wandb)
    return settings, False


def connect(settings: SearchSettings) -> None:
    """Join the cluster at ``settings.address``, or start a local Ray that listens on loopback only."""
    # the Ray Train controllers of multi-worker trials read these: how often they poll, how long workers may start
    runtime_env = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{settings.worker_start_timeout:g}"}}
    if settings.address:  # the workers' output stays in Ray's logs and the trials' folders, off the console
        ray.init(address=settings.address, runtime_env=runtime_env, _node_ip_address=settings.node_ip_address,
                 log_to_driver=False)
    else:
        ray.init(_node_ip_address=settings.node_ip_address or LOCAL_NODE_IP, include_dashboard=True,
                 runtime_env=runtime_env, log_to_driver=False)


def continue_command(settings: SearchSettings, prog: str) -> str:
    """The command that continues this search where it stopped."""
    command = f"{prog} --resume --name {settings.name} --storage-path {settings.storage_path}"
    return command + (f" --address {settings.address}" if settings.address else "")


def search(settings: SearchSettings, resume: bool, prog: str) -> int:
    """Run the search on a local Ray (held alone on this machine) or the given cluster; 0 when it finished."""
    local = contextlib.nullcontext() if settings.address else exclusive_local_ray(settings.experiment)
    with local:
        started = time.perf_counter()
        # the data first: a release that cannot be read or fetched leaves no experiment folder behind
        dataset_path = prepare(settings.dataset, settings.data_dir, params=SplitParams())
        announce(settings)
        manifest = read_manifest(dataset_path)  # the trials load the data; the driver needs only its facts
        counts = manifest["counts"]
        print(f"{settings.dataset}: {counts['users']} users, {counts['items']} items, {counts['train']} training "
              "pairs", flush=True)
        if not resume and (warning := storage_warning(settings, counts)):
            print(warning, flush=True)
        if resume and not is_uri(settings.experiment):
            repaired = repair_journal(Path(settings.experiment) / STUDY_FILE)
            if repaired:
                print(repaired, flush=True)
        connect(settings)  # ray.init sets a SIGTERM handler of its own, so ours goes in after it
        reserve = Reserve(settings.experiment, settings.num_samples)
        with _stop_signals() as signals:
            try:
                concurrency = plan(settings)
                reserve.hold()
                tuner = build_tuner(settings, trial_spec(settings, dataset_path, manifest["fingerprint"]), concurrency,
                                    resume, reserve)
                record = SearchRecord(settings, str(dataset_path), manifest["fingerprint"])
                if not resume:
                    record.write()
                search_started, search_started_at = time.perf_counter(), time.time()
                results = tuner.fit()
                now = time.perf_counter()
            except Exception as error:
                # a trial's error file written on a full disk is empty, and Tune fails reading it
                fault = storage_fault(error, settings.storage_path) or reserve.fault() or probe(settings.storage_path)
                if fault is None:
                    raise
                return stopped_by_storage(fault, error, settings, prog)
            finally:
                ray.shutdown()
                given_back_for = reserve.drop()
    failed = [result.error for result in results if result.error]
    fault = next((found for error in failed if (found := storage_fault(error, settings.storage_path))),
                 None) or given_back_for or (probe(settings.storage_path) if failed else None)
    if fault:
        return stopped_by_storage(fault, None, settings, prog)
    # Tune's count of ended trials; restored trials' last rows need not say ``done``, which ``finished`` reads
    if signals or results.num_terminated + results.num_errors < settings.num_samples:
        name = signal.Signals(signals[-1]).name if signals else "stopped early"
        print(f"\nsearch interrupted ({name}): {finished(results)} of {settings.num_samples} trials finished; "
              f"nothing is summarised. Continue it with:\n  {continue_command(settings, prog)}", file=sys.stderr)
        return 128 + (signals[-1] if signals else signal.SIGINT)
    outcome = summarize(results, now - started, search_started_at, now - search_started, concurrency)
    replace(record, outcome=outcome).write()
    print_outcome(outcome, settings)
    return 0 if outcome.best_trial is not None else 1


def stopped_by_storage(fault: StorageFault, error: BaseException | None, settings: SearchSettings, prog: str) -> int:
    """A search whose storage failed a write: one line with the path and the reason, the traceback in the log,
    the command that continues it once the storage is fixed; exit status 74 (an I/O error, as sysexits names it)."""
    if error is not None:
        logging.getLogger("ray").error("the search stopped: %s", fault.line(), exc_info=error)
    print(f"\nsearch stopped: {fault.line()}\nWhat had finished is kept. Once the storage is fixed, continue it "
          f"with:\n  {continue_command(settings, prog)}", file=sys.stderr, flush=True)
    return STORAGE_FAULT_STATUS


def announce(settings: SearchSettings) -> None:
    """Say where the search writes and how to watch it; from here on Ray's own output goes to its log file."""
    log_file = (Path.cwd() if is_uri(settings.experiment) else Path(settings.experiment)) / LOG_FILE
    send_ray_output_to(log_file)
    lines = [f"experiment {settings.experiment}", f"  Ray's log: {log_file}",
             f"  tensorboard --logdir {settings.experiment}", f"  optuna-dashboard {settings.experiment}/{STUDY_FILE}"]
    if settings.mlflow is not None:
        lines.append(f"  mlflow ui --backend-store-uri {mlflow_uri(settings)}")
    print("\n".join(lines), flush=True)


def plan(settings: SearchSettings) -> int:
    """Check the cluster's storage and resources; how many trials run at once."""
    check_storage_shared(settings.storage_path, settings.storage_path != str(DEFAULT_STORAGE.resolve()))
    resources = plan_resources(ray.cluster_resources(), settings.workers_per_trial, settings.cpus_per_worker,
                               settings.gpus_per_worker, settings.concurrency)
    print(f"{settings.model}: {settings.searcher} searcher, {settings.scheduler} scheduler; {resources.concurrency} "
          f"trial(s) at a time, each {settings.workers_per_trial} worker(s) x {settings.cpus_per_worker:g} CPU"
          f"{f' x {settings.gpus_per_worker:g} GPU' if settings.gpus_per_worker else ''}", flush=True)
    if resources.fits_now < resources.concurrency:
        print(f"the cluster holds {resources.fits_now} such trial(s) now; the rest, and reading the data, "
              "wait for the autoscaler", flush=True)
    return resources.concurrency


def print_outcome(outcome: SearchOutcome, settings: SearchSettings) -> None:
    """The failed trials and why, where the time went, and the best trial (never a failed one)."""
    for folder, reason in outcome.failures.items():
        print(f"failed: {folder}: {reason}")
    print(outcome.time_spent())
    if outcome.best_trial is None:
        print("no trial reported a validation metric: nothing to evaluate", file=sys.stderr)
        return
    print(f"best trial {outcome.best_trial}: " + ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in outcome.best_config.items()))
    print("validation (sampled, best epoch {}): {}".format(
        outcome.best_epoch, ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in outcome.best_valid.items())))
    if outcome.still_improving:
        why = f"--max-epochs {settings.max_epochs}" if outcome.best_epoch == settings.max_epochs else "the scheduler"
        print(f"warning: the best trial was still improving when {why} stopped it at epoch {outcome.best_epoch}")
    for line in at_edges(settings.space, outcome.best_config):
        print(f"warning: {line}: a wider range may find better")
    print(f"next: python tune/best.py {settings.experiment}")


@contextlib.contextmanager
def _stop_signals():
    """Treat SIGTERM as Ctrl-C (Tune then saves the experiment and stops); yields the signals received.

    While it runs, Tune holds SIGINT, and a SIGINT that stops it puts back the handler Tune found:
    ``after_tune``. Finding it back is how a Ctrl-C is known, even when every trial was running and
    Tune's results then count them all as ended.
    """
    received: list[int] = []

    def after_tune(number, frame):  # Tune has already stopped: a second Ctrl-C ends the command
        raise KeyboardInterrupt

    def forward(number, frame):
        received.append(number)
        os.kill(os.getpid(), signal.SIGINT)

    previous_int, previous_term = signal.signal(signal.SIGINT, after_tune), signal.signal(signal.SIGTERM, forward)
    try:
        yield received
    finally:
        if signal.getsignal(signal.SIGINT) is after_tune and not received:
            received.append(signal.SIGINT)
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def run(argv: list[str]) -> int:
    """The command without the error handling of ``main``: for callers that want the exceptions."""
    settings, resume = parse_args(argv)
    check_settings(settings, resume)
    check_loggers(settings)
    prog = "python tune/search.py" if Path(sys.argv[0]).name == "search.py" else "lrml-search"
    # Tune saves the experiment (trials, searcher) at least every 2 s: a killed driver loses at most that much
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's newer console prints its header even when told to be silent
    try:
        return search(settings, resume, prog)
    except KeyboardInterrupt:
        if SearchRecord.exists(settings.experiment):
            print(f"\nsearch interrupted; continue it with:\n  {continue_command(settings, prog)}", file=sys.stderr)
        else:
            print("\nsearch interrupted before it started; nothing to continue", file=sys.stderr)
        return 128 + signal.SIGINT


def main(argv: list[str] | None = None) -> int:
    """``tune/search.py`` and ``lrml-search``: a mistake in the arguments is one line, not a traceback."""
    return cli.run(run, argv, "search.py")


if __name__ == "__main__":
    sys.exit(main())
