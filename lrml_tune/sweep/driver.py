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
from lrml.evaluate import PROTOCOLS
from lrml.options import from_flags, parser_for
from lrml_tune.sweep.budget import BUDGET_FILE, budget_state
from lrml_tune.sweep.checks import check_settings, check_storage_shared, storage_warning
from lrml_tune.sweep.faults import Reserve, StorageFault, probe, storage_fault
from lrml_tune.sweep.local_ray import LOCAL_NODE_IP, exclusive_local_ray
from lrml_tune.sweep.pruning import prune_superseded
from lrml_tune.sweep.record import SearchOutcome, SearchRecord
from lrml_tune.sweep.resources import plan_resources
from lrml_tune.sweep.settings import PROG, SearchSettings
from lrml_tune.sweep.space import Param, at_edges, load_space
from lrml_tune.sweep.storage import brief, is_uri, local_folder, upload
from lrml_tune.sweep.study import STUDY_FILE, repair_journal
from lrml_tune.sweep.tuner import build_tuner, finished, summarize
from lrml_tune.sweep.watch import LOG_FILE, check_loggers, mlflow_uri, send_ray_output_to

STORAGE_FAULT_STATUS = 74
# Read by Ray Train's controllers (ray.train.v2._internal.constants; docs/design.md, "Internals"): how often they
# poll, and how long a trial's workers may take to start
TRAIN_HEALTH_CHECK_ENV, TRAIN_START_TIMEOUT_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Read by Tune (ray.tune.constants, ray.air.constants)
TUNE_SETTINGS = {"TUNE_GLOBAL_CHECKPOINT_S": "2",  # the experiment saved at least every 2 s: a killed driver loses that much
                 "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                 "RAY_AIR_NEW_OUTPUT": "0"}  # Tune's newer console prints its header even when told to be silent


def command_parser() -> argparse.ArgumentParser:
    """``tune/search.py``'s parser: a flag per ``SearchSettings`` field, and the command's own two."""
    parser = parser_for(SearchSettings, prog=prog(), description=__doc__.split("\n\n")[0])
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted search --name in --storage-path, with the settings it started with")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser


def parse_command_line(argv: list[str]) -> tuple[SearchSettings, bool]:
    """The search's settings from the command line, and whether to resume; ``--resume`` reads them back instead,
    keeping only where the cluster is."""
    args = command_parser().parse_args(argv)
    settings = from_flags(SearchSettings, args)
    if args.resume:
        recorded = SearchRecord.read(settings.experiment).settings
        return replace(recorded, address=settings.address, node_ip_address=settings.node_ip_address), True
    return settings, False


def prog() -> str:
    """How the user ran the search: the script from a clone, or the installed command."""
    return PROG if Path(sys.argv[0]).name == "search.py" else "lrml-search"


def connect(settings: SearchSettings) -> None:
    """Join the cluster at ``settings.address``, or start a local Ray that listens on loopback only."""
    runtime_env = {"env_vars": {TRAIN_HEALTH_CHECK_ENV: "0.5", TRAIN_START_TIMEOUT_ENV: f"{settings.worker_start_timeout:g}",
                                # idle OpenMP threads sleep, so a trial's numba pool may hold a thread per core for
                                # the cores it is lent (lrml/__init__.py)
                                **({"OMP_WAIT_POLICY": "PASSIVE"} if settings.lends_cores else {})}}
    if settings.address:  # the workers' output stays in Ray's logs and the trials' folders, off the console
        ray.init(address=settings.address, runtime_env=runtime_env, _node_ip_address=settings.node_ip_address,
                 log_to_driver=False)
    else:  # "local": a new Ray, never one that RAY_ADDRESS or a dead Ray's /tmp/ray/ray_current_cluster names
        ray.init(address="local", _node_ip_address=settings.node_ip_address or LOCAL_NODE_IP, include_dashboard=True,
                 runtime_env=runtime_env, log_to_driver=False)


def continue_command(settings: SearchSettings) -> str:
    """The command that continues this search where it stopped."""
    command = f"{prog()} --resume --name {settings.name} --storage-path {settings.storage_path}"
    return command + (f" --address {settings.address}" if settings.address else "")


def run(settings: SearchSettings, resume: bool = False) -> int:
    """The search ``settings`` describe (``resume``: continue the one recorded at ``settings.experiment``); 0 when
    it finished. A user's mistake raises ``UserError``; an interrupt returns 128 plus the signal's number."""
    check_settings(settings, resume)
    check_loggers(settings)
    space = SearchRecord.read(settings.experiment).space if resume else load_space(settings.space_path)
    for name, value in TUNE_SETTINGS.items():
        os.environ.setdefault(name, value)
    try:
        return _search(settings, space, resume)
    except KeyboardInterrupt:
        if SearchRecord.exists(settings.experiment):
            print(f"\nsearch interrupted; continue it with:\n  {continue_command(settings)}", file=sys.stderr)
        else:
            print("\nsearch interrupted before it started; nothing to continue", file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as error:  # a write after the trials ended (the outcome, the pruning) met a failed storage
        fault = storage_fault(error, settings.storage_path) or probe(settings.storage_path)
        if fault is None:
            raise
        return stopped_by_storage(fault, error, settings)
    finally:
        keep_log(settings)


def keep_log(settings: SearchSettings) -> None:
    """A cloud search's log copied beside its experiment, where a resume from another machine finds it; the
    local copy stays, and a storage that cannot take it is said in a line."""
    log_file = local_folder(settings.experiment) / LOG_FILE
    if not is_uri(settings.experiment) or not log_file.exists():
        return
    try:
        if SearchRecord.exists(settings.experiment):  # not a search refused before it began
            upload(log_file, settings.experiment)
    except OSError as error:
        print(f"warning: could not copy {log_file} to {settings.experiment} ({brief(error)}); it stays on this machine",
              file=sys.stderr)


def _search(settings: SearchSettings, space: dict[str, Param], resume: bool) -> int:
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
        if not resume and (warning := storage_warning(settings, space, counts)):
            print(warning, flush=True)
        if resume and not is_uri(settings.experiment):
            repaired = repair_journal(Path(settings.experiment) / STUDY_FILE)
            if repaired:
                print(repaired, flush=True)
        record = SearchRecord(settings, space, str(dataset_path), manifest["fingerprint"])
        connect(settings)  # ray.init sets a SIGTERM handler of its own, so ours goes in after it
        reserve = Reserve(settings.experiment, settings.num_samples)
        with _stop_signals() as signals:
            try:
                concurrency = plan(settings)
                reserve.hold()
                tuner = build_tuner(record, concurrency, resume, reserve)
                if not resume:
                    record.write()
                search_started, search_started_at = time.perf_counter(), time.time()
                results = tuner.fit()
                now = time.perf_counter()
                cpus = ray.cluster_resources().get("CPU", 0.0)  # after the search: an autoscaled cluster at its size
            except Exception as error:
                # a trial's error file written on a full disk is empty, and Tune fails reading it
                fault = storage_fault(error, settings.storage_path) or reserve.fault() or probe(settings.storage_path)
                if fault is None:
                    raise
                return stopped_by_storage(fault, error, settings)
            finally:
                ray.shutdown()
                given_back_for = reserve.drop()
    failed = [result.error for result in results if result.error]
    fault = next((found for error in failed if (found := storage_fault(error, settings.storage_path))),
                 None) or given_back_for or (probe(settings.storage_path) if failed else None)
    if fault:
        return stopped_by_storage(fault, None, settings)
    budget = budget_state(f"{settings.experiment}/{BUDGET_FILE}") if settings.time_budget else None
    ran_out = bool(budget and budget["ran_out"])
    # Tune's count of ended trials; restored trials' last rows need not say ``done``, which ``finished`` reads
    if signals or not ran_out and results.num_terminated + results.num_errors < settings.num_samples:
        name = signal.Signals(signals[-1]).name if signals else "stopped early"
        print(f"\nsearch interrupted ({name}): {finished(results)} of {settings.num_samples} trials finished; "
              f"nothing is summarised. Continue it with:\n  {continue_command(settings)}", file=sys.stderr)
        return 128 + (signals[-1] if signals else signal.SIGINT)
    prune_superseded(results)
    outcome = summarize(results, settings.monitor, now - started, search_started_at, now - search_started,
                        concurrency, cpus, budget, settings.time_budget_seconds)
    replace(record, outcome=outcome).write()
    print_outcome(outcome, record)
    return 0 if outcome.best_trial is not None else 1


def stopped_by_storage(fault: StorageFault, error: BaseException | None, settings: SearchSettings) -> int:
    """A search whose storage failed a write: one line with the path and the reason, the traceback in the log,
    the command that continues it once the storage is fixed; exit status 74 (an I/O error, as sysexits names it)."""
    if error is not None:
        logging.getLogger("ray").error("the search stopped: %s", fault.line(), exc_info=error)
    print(f"\nsearch stopped: {fault.line()}\nWhat had finished is kept. Once the storage is fixed, continue it "
          f"with:\n  {continue_command(settings)}", file=sys.stderr, flush=True)
    return STORAGE_FAULT_STATUS


def announce(settings: SearchSettings) -> None:
    """Say where the search writes and how to watch it; from here on Ray's own output goes to its log file."""
    log_file = local_folder(settings.experiment) / LOG_FILE
    send_ray_output_to(log_file)
    cloud = is_uri(settings.experiment)
    lines = [f"experiment {settings.experiment}",
             f"  Ray's log: {log_file}{' (copied to the experiment when the search stops)' if cloud else ''}",
             f"  tensorboard --logdir {settings.experiment}",
             # a journal cannot be appended to on object storage: the study is saved with the searcher's state
             "  the Optuna study: saved with the searcher's state; tune/best.py plots the trials" if cloud
             else f"  optuna-dashboard {settings.experiment}/{STUDY_FILE}"]
    if settings.mlflow is not None:
        lines.append(f"  mlflow ui --backend-store-uri {mlflow_uri(settings)}")
    print("\n".join(lines), flush=True)


def plan(settings: SearchSettings) -> int:
    """Check the cluster's storage and resources; how many trials run at once."""
    check_storage_shared(settings.storage_path, settings.storage_given)
    resources = plan_resources(ray.cluster_resources(), settings.workers_per_trial, settings.cpus_per_worker,
                               settings.gpus_per_worker, settings.concurrency)
    print(f"{settings.model}: {settings.searcher} searcher, {settings.scheduler} scheduler; {resources.concurrency} "
          f"trial(s) at a time, each {settings.workers_per_trial} worker(s) x {settings.cpus_per_worker:g} CPU"
          f"{f' x {settings.gpus_per_worker:g} GPU' if settings.gpus_per_worker else ''}", flush=True)
    if resources.fits_now < resources.concurrency:
        print(f"the cluster holds {resources.fits_now} such trial(s) now; the rest, and reading the data, "
              "wait for the autoscaler", flush=True)
    return resources.concurrency


def print_outcome(outcome: SearchOutcome, record: SearchRecord) -> None:
    """The failed trials and why, where the time went, and the best trial (never a failed one)."""
    settings = record.settings
    for folder, reason in outcome.failures.items():
        print(f"failed: {folder}: {reason}")
    print(outcome.time_spent())
    if outcome.best_trial is None:
        print("no trial reported a validation metric: nothing to evaluate", file=sys.stderr)
        return
    print(f"best trial {outcome.best_trial}: " + ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in outcome.best_config.items()))
    for protocol in PROTOCOLS:
        found = {key.split("/")[-1]: value for key, value in outcome.best_valid.items() if key.split("/")[1] == protocol}
        if found:
            chosen = " (selected on)" if protocol == settings.metric else ""
            print(f"validation {protocol}{chosen}, best epoch {outcome.best_epoch}: "
                  + ", ".join(f"{name} {value:.4f}" for name, value in found.items()))
    if outcome.still_improving:
        why = f"--max-epochs {settings.max_epochs}" if outcome.best_epoch == settings.max_epochs else "the scheduler"
        print(f"warning: the best trial was still improving when {why} stopped it at epoch {outcome.best_epoch}")
    for line in at_edges(record.space, outcome.best_config):
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


def main(argv: list[str] | None = None) -> int:
    """``tune/search.py`` and ``lrml-search``: a mistake in the arguments is one line, not a traceback."""
    return cli.run(lambda arguments: run(*parse_command_line(arguments)), argv, "search.py")


if __name__ == "__main__":
    sys.exit(main())
