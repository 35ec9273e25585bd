"""Watching a search: a console a person can follow, Ray's own output in a log file, and the tools
users already watch searches with (TensorBoard files, which Tune writes per trial; MLflow and
Weights & Biases through Ray's logger callbacks; the Optuna study in Optuna's own storage)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ray import tune

from lrml.errors import UserError
from lrml.train import MONITOR
from lrml_tune.settings import SearchSettings

CONSOLE_WIDTH = 100
LOG_FILE = "search.log"


class ConsoleProgress(tune.Callback):
    """One line whenever a trial ends: trials done, stopped early, failed and running, the best so far."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples
        self.started = time.monotonic()
        self.best: tuple[float, str] | None = None

    def setup(self, **info):
        self.started = time.monotonic()  # a resumed search counts from its own start

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(MONITOR)
        if value is not None and value == value and (self.best is None or value > self.best[0]):
            self.best = (value, trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials)

    def _print(self, trials) -> None:
        ended = [trial for trial in trials if trial.status in ("TERMINATED", "ERROR")]
        failed = sum(trial.status == "ERROR" for trial in ended)
        stopped = sum(not (trial.last_result or {}).get("last_epoch", True) for trial in ended
                      if trial.status == "TERMINATED")
        running = sum(trial.status == "RUNNING" for trial in trials)
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        best = f"best valid nDCG@10 {self.best[0]:.4f} ({self.best[1]})" if self.best else "no result yet"
        line = (f"[{minutes:3d}:{seconds:02d}] {len(ended)}/{self.num_samples} trials done ({stopped} stopped "
                f"early, {failed} failed), {running} running; {best}")
        print(line[:CONSOLE_WIDTH], flush=True)


def send_ray_output_to(log_file: Path) -> None:
    """Ray's and Tune's log messages and Python's warnings go to ``log_file``, not the console."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("ray", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False


def logger_callbacks(settings: SearchSettings) -> list[tune.Callback]:
    """MLflow and Weights & Biases loggers, as asked for; each trial becomes a run there."""
    callbacks = []
    if settings.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback
        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(settings), experiment_name=settings.name))
    if settings.wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback
        callbacks.append(WandbLoggerCallback(project="lrml-tune", group=settings.name))
    return callbacks


def mlflow_uri(settings: SearchSettings) -> str:
    """The tracking URI given, or an SQLite file in the experiment folder (the current folder for a cloud one)."""
    if settings.mlflow:
        return settings.mlflow
    folder = Path.cwd() if "://" in settings.experiment else Path(settings.experiment)
    return f"sqlite:///{folder / 'mlflow.db'}"


def check_loggers(settings: SearchSettings) -> None:
    """Refuse, before Ray starts, a logger whose package is not installed."""
    if settings.mlflow is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UserError("--mlflow needs the mlflow package: pip install mlflow-skinny") from None
    if settings.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb (and wandb login)") from None
