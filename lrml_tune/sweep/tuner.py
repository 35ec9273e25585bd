"""Build the Ray Tune run a search's settings describe, and read its outcome back."""
from __future__ import annotations

from dataclasses import replace

from ray import tune

from lrml.errors import UserError
from lrml.train import defaults
from lrml_tune.sweep.budget import BUDGET_FILE, TimeBudget
from lrml_tune.sweep.cores import CoreLender
from lrml_tune.sweep.experiment import best_epoch_row, valid_metrics
from lrml_tune.sweep.faults import Reserve, StorageWatch
from lrml_tune.sweep.pruning import CheckpointPruner
from lrml_tune.sweep.record import SearchOutcome, SearchRecord
from lrml_tune.sweep.settings import SearchSettings
from lrml_tune.sweep.space import starting_points
from lrml_tune.sweep.stopping import make_scheduler
from lrml_tune.sweep.study import SearcherEndsGenerator, StudySearcher, create_study, make_sampler
from lrml_tune.sweep.trainable import DatasetRef, TrialSpec, run_trial
from lrml_tune.sweep.watch import ConsoleProgress, logger_callbacks

# not *.pkl or *.json: a resumed Tune copies those back from its staging folder at the end, over newer ones
SCHEDULER_STATE_FILE = "scheduler-state.pickle"


def trial_spec(record: SearchRecord) -> TrialSpec:
    """What every trial shares: the model's defaults with this search's budget and seed, the dataset, resources."""
    settings = record.settings
    base = replace(defaults(settings.model), max_epochs=settings.max_epochs, patience=settings.patience,
                   seed=settings.seed, monitor=settings.metric, validate_both=settings.report_both)
    return TrialSpec(base, DatasetRef(record.dataset_path, settings.dataset, settings.data_dir, record.fingerprint),
                     workers=settings.workers_per_trial, cpus_per_worker=settings.cpus_per_worker,
                     gpus_per_worker=settings.gpus_per_worker, ray_train=settings.workers_per_trial > 1,
                     train_storage=f"{settings.experiment}/train", max_failures=settings.max_failures,
                     sync_every=settings.sync_every, core_ledger=core_ledger(settings))


def core_ledger(settings: SearchSettings) -> str | None:
    """The name of the actor that lends the search's idle cores to its last trials, if they are lent."""
    return f"lrml-core-ledger-{settings.name}" if settings.lends_cores else None


def build_tuner(record: SearchRecord, concurrency: int, resume: bool, reserve: Reserve) -> tune.Tuner:
    """The Tuner: the chosen searcher over an Optuna study of the record's space, the chosen scheduler, one trial
    per configuration.

    On ``resume`` Tune restores the trials and the searcher it saved; the scheduler, saved by Tune with
    the Tuner as it was at the start, reads back its rungs from the experiment folder.
    """
    settings, spec = record.settings, trial_spec(record)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), spec.trial_resources)
    if resume:  # Tune restores the callbacks it saved, the watch among them; it names the reserve by its path
        if not tune.Tuner.can_restore(settings.experiment):
            raise UserError(f"--resume: no search to resume at {settings.experiment}")
        return tune.Tuner.restore(settings.experiment, trainable=trainable, resume_unfinished=True,
                                  restart_errored=True)
    study = create_study(settings.experiment, settings.name, make_sampler(settings.searcher, settings.seed))
    searcher = StudySearcher(record.space, study, settings.monitor, "max", starting_points(settings.model, record.space),
                             num_samples=settings.num_samples)
    watch = StorageWatch(settings.storage_path, reserve)
    budget = TimeBudget(settings.time_budget_seconds, f"{settings.experiment}/{BUDGET_FILE}") \
        if settings.time_budget else None
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # the searcher counts the trials (StudySearcher): Tune's counts may be restored from another save
            metric=settings.monitor, mode="max", search_alg=SearcherEndsGenerator(searcher, concurrency),
            num_samples=-1,
            scheduler=make_scheduler(settings.scheduler, settings.max_epochs, settings.grace_epochs,
                                     f"{settings.experiment}/{SCHEDULER_STATE_FILE}"),
            # a trial that trains in its own process ends cleanly when stopped, so Tune can hand the process on
            reuse_actors=not spec.ray_train),
        run_config=tune.RunConfig(
            name=settings.name, storage_path=settings.storage_path, verbose=0,
            # each trial's output goes to stdout and stderr files in its folder, not to the console
            log_to_file=True, sync_config=tune.SyncConfig(sync_artifacts=True),
            # every checkpoint kept by Tune: the pruner deletes superseded ones once no saved state names them
            callbacks=[ConsoleProgress(settings.num_samples, settings.monitor, budget), watch, CheckpointPruner(),
                       *([budget] if budget else []), *logger_callbacks(settings),
                       *([CoreLender(spec.core_ledger, settings.num_samples, spec.threads)] if spec.core_ledger else [])],
            stop=budget,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures)))


def finished(results: tune.ResultGrid) -> int:
    """How many trials ran to their end (completed, stopped early or failed). Tune's own count also takes in
    the trials a Ctrl-C stopped mid-epoch; their last result does not say ``done``."""
    return sum(1 for result in results if result.error is not None or (result.metrics or {}).get("done", False))


def summarize(results: tune.ResultGrid, monitor: str, wall_seconds: float, search_started_at: float,
              search_seconds: float, concurrency: int, cpus: float, budget: dict | None = None,
              budget_seconds: float | None = None) -> SearchOutcome:
    """The best trial by ``monitor`` over all its epochs (a failed trial never counts), the failed trials and why,
    how the search spent its time and the cluster's ``cpus``, and its time budget's state (``budget``) where it had
    one. Trials a budget ended before they started are not counted."""
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None and monitor in r.metrics_dataframe]
    # a resumed search's results hold its earlier runs' epochs too; Tune stamps each epoch in whole seconds
    this_run = [frame[frame["timestamp"] >= int(search_started_at)] for frame in frames]
    failures = {r.path.rstrip("/").rsplit("/", 1)[-1]: _reason(r.error) for r in results if r.error}
    healthy = [r for r in results if not r.error and r.metrics_dataframe is not None
               and monitor in r.metrics_dataframe and r.metrics_dataframe[monitor].notna().any()]
    best = max(healthy, key=lambda r: r.metrics_dataframe[monitor].max(), default=None)
    row = best_epoch_row(best.metrics_dataframe, monitor) if best is not None else None
    started = [r for r in results if r.error or r.metrics_dataframe is not None]
    return SearchOutcome(
        trials=len(started), errors=results.num_errors, epochs_trained=int(sum(len(f) for f in frames)),
        wall_seconds=round(wall_seconds, 1), search_started_at=search_started_at,
        search_seconds=round(search_seconds, 1),
        training_seconds=round(sum(float(frame["seconds"].sum()) for frame in this_run), 1), concurrency=concurrency,
        cpu_seconds=round(sum(float(frame["cpu_seconds"].sum()) for frame in this_run if "cpu_seconds" in frame), 1),
        cpus=cpus,
        best_trial=str(row["trial_id"]) if best is not None else None,
        best_config=best.config if best is not None else {}, best_epoch=int(row["epoch"]) if best is not None else 0,
        best_trial_epochs=int(best.metrics_dataframe["epoch"].max()) if best is not None else 0,
        best_valid=valid_metrics(row) if best is not None else {}, failures=failures,
        epochs_this_run=int(sum(len(frame) for frame in this_run)),
        time_budget_seconds=budget_seconds, budget_spent_seconds=round(budget["spent"], 1) if budget else None,
        trials_cut=list(budget["cut"]) if budget and budget["ran_out"] else [])


def _reason(error: Exception) -> str:
    """The last line of an error's text (a remote error carries its whole traceback): the part a person reads."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
