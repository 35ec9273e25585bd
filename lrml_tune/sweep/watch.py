"""Watching a search: a console a person can follow, Ray's own output in a log file, and the tools
users already watch searches with (TensorBoard files, which Tune writes per trial; MLflow and
Weights & Biases through Ray's logger callbacks; the Optuna study in Optuna's own storage)."""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path

from ray import tune

from lrml.errors import UserError
from lrml_tune.sweep.budget import TimeBudget
from lrml_tune.sweep.settings import SearchSettings
from lrml_tune.sweep.storage import is_uri

CONSOLE_WIDTH = 110
LOG_FILE = "search.log"
CONNECT_SECONDS = 5
# MLflow's HTTP client retries a failed request for minutes by default; a search does not wait on tracking
MLFLOW_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class ConsoleProgress(tune.Callback):
    """One line whenever a trial ends: trials done, stopped early, failed and running, an estimate of the time
    left, the best validation ``monitor`` so far."""

    def __init__(self, num_samples: int, monitor: str, budget: TimeBudget | None = None):
        self.num_samples, self.monitor, self.budget = num_samples, monitor, budget
        self.started, self.ended_before = time.monotonic(), None

    def setup(self, **info):
        self.started, self.ended_before = time.monotonic(), None  # a resumed search counts from its own start

    def time_left(self, ended: int, elapsed: float) -> float | None:
        """Seconds until the search ends: the trials left at the rate trials have ended in this run, or the budget
        left if that comes first; None before this run has ended a trial."""
        done_here = ended - self.ended_before
        left = (self.num_samples - ended) * elapsed / done_here if done_here > 0 else None
        if self.budget is not None:
            budget_left = max(0.0, self.budget.seconds - self.budget.state["spent"])
            left = budget_left if left is None else min(left, budget_left)
        return left

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, trial, "ERROR")

    def _print(self, trials, ending, outcome: str) -> None:
        """Tune calls back before it marks ``ending`` as ended, so its outcome is passed in."""
        ended = [(trial, trial.status) for trial in trials
                 if trial is not ending and trial.status in ("TERMINATED", "ERROR")] + [(ending, outcome)]
        failed = sum(status == "ERROR" for _, status in ended)
        stopped = sum(status == "TERMINATED" and not (trial.last_result or {}).get("last_epoch", True)
                      for trial, status in ended)
        running = sum(trial.status == "RUNNING" for trial in trials if trial is not ending)
        if self.ended_before is None:  # the trials a resumed search's earlier runs ended
            self.ended_before = len(ended) - 1
        elapsed = time.monotonic() - self.started
        minutes, seconds = divmod(int(elapsed), 60)
        left = self.time_left(len(ended), elapsed)
        # every trial's best so far, those of a resumed search's earlier runs included (Tune restores them)
        seen = [(value, trial.trial_id) for trial in trials
                if (value := trial.metric_analysis.get(self.monitor, {}).get("max")) is not None and value == value]
        protocol = self.monitor.split("/")[1]
        best = "best {} nDCG@10 {:.4f} ({})".format(protocol, *max(seen)) if seen else "no result yet"
        estimate = f", ~{_duration(left)} left" if left is not None and len(ended) < self.num_samples else ""
        line = (f"[{minutes:3d}:{seconds:02d}] {len(ended)}/{self.num_samples} done, {stopped} stopped early, "
                f"{failed} failed, {running} running{estimate} | {best}")
        print(line[:CONSOLE_WIDTH], flush=True)


def _duration(seconds: float) -> str:
    """``45s``, ``12m`` or ``2h05m``: an estimate's precision."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


def send_ray_output_to(log_file: Path) -> None:
    """The log messages of Ray, Tune, Optuna and MLflow, and Python's warnings, go to ``log_file``, not the console."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is dropped, not printed
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("ray", "py.warnings", "optuna", "mlflow", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False


def logger_callbacks(settings: SearchSettings) -> list[tune.Callback]:
    """MLflow and Weights & Biases loggers, as asked for; each trial becomes a run there."""
    callbacks = []
    if settings.mlflow is not None:
        callbacks.append(_mlflow_logger(mlflow_uri(settings), settings.name))
    if settings.wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback
        callbacks.append(WandbLoggerCallback(project="lrml-tune", group=settings.name))
    return callbacks


def _mlflow_logger(tracking_uri: str, experiment: str) -> tune.Callback:
    """Ray's MLflow logger, with the metric names MLflow accepts: it refuses "@", so hr@10 is hr_at_10 there."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowLogger(MLflowLoggerCallback):
        """Ray's logger, which stops (saying so once) when the tracking server goes away: the search goes on."""

        stopped = False

        def setup(self, *args, **kwargs):
            self._guarded(super().setup, *args, **kwargs)

        def log_trial_start(self, trial):
            self._guarded(super().log_trial_start, trial)

        def log_trial_result(self, iteration, trial, result):
            self._guarded(super().log_trial_result, iteration, trial,
                          {mlflow_name(key): value for key, value in result.items()})

        def log_trial_end(self, trial, failed=False):
            self._guarded(super().log_trial_end, trial, failed)

        def _guarded(self, method, *args, **kwargs):
            if self.stopped:
                return
            try:
                method(*args, **kwargs)
            except Exception as error:  # any failure of tracking: the search must not depend on it
                self.stopped = True
                logging.getLogger("mlflow").exception("MLflow stopped taking results")
                print(f"warning: MLflow at {tracking_uri} stopped taking the search's results ({type(error).__name__}); "
                      f"the search goes on without it (details in {LOG_FILE})", file=sys.stderr, flush=True)

    return MLflowLogger(tracking_uri=tracking_uri, experiment_name=experiment)


def mlflow_name(metric: str) -> str:
    """The name MLflow keeps a metric under (``valid/sampled/ndcg@10`` -> ``valid/sampled/ndcg_at_10``)."""
    return metric.replace("@", "_at_")


def check_reachable(tracking_uri: str) -> None:
    """Refuse an http(s) tracking URI whose server does not take a connection within ``CONNECT_SECONDS``."""
    address = urllib.parse.urlsplit(tracking_uri)
    if address.scheme not in ("http", "https"):
        return  # a local store: MLflow creates it
    port = address.port or (443 if address.scheme == "https" else 80)
    try:
        socket.create_connection((address.hostname, port), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise UserError(f"--mlflow {tracking_uri}: no tracking server answers there ({error.strerror or error}); start "
                        "it, or drop --mlflow") from None


def mlflow_uri(settings: SearchSettings) -> str:
    """The tracking URI given, or an SQLite file in the experiment folder (the current folder for a cloud one)."""
    if settings.mlflow:
        return settings.mlflow
    folder = Path.cwd() if is_uri(settings.experiment) else Path(settings.experiment)
    return f"sqlite:///{folder / 'mlflow.db'}"


def check_loggers(settings: SearchSettings) -> None:
    """Refuse, before Ray starts, a logger whose package is not installed or a tracking server that does not answer
    within seconds; MLflow's own requests are then bounded too, so tracking never holds the search up for long."""
    if settings.mlflow is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UserError("--mlflow needs the mlflow package: pip install mlflow-skinny") from None
        for name, value in MLFLOW_LIMITS.items():
            os.environ.setdefault(name, value)
        check_reachable(settings.mlflow)
    if settings.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb (and wandb login)") from None
