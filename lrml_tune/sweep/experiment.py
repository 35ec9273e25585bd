"""Read a finished (or interrupted) search: every trial's reported epochs, its best epoch and checkpoint.

Works on a local folder or the cloud URI the search wrote to (through pyarrow's filesystems,
which Ray Tune also uses), wherever the folder lies now, and needs no running Ray.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from ray.tune import ExperimentAnalysis

from lrml.train import monitor_key
from lrml_tune.sweep.record import SearchRecord
from lrml_tune.sweep.storage import filesystem, resolved
from lrml_tune.sweep.trainable import CHECKPOINT_FILE


def best_epoch_row(frame: pd.DataFrame, monitor: str) -> pd.Series:
    """The reported epoch with the highest ``monitor`` (a validation nDCG@10)."""
    return frame.loc[frame[monitor].idxmax()]


def valid_metrics(row: pd.Series) -> dict[str, float]:
    """The validation metrics of one reported epoch."""
    return {k: float(row[k]) for k in row.index if k.startswith("valid/")}


@dataclass
class TrialSummary:
    """One trial at its best epoch over all the epochs it reported."""

    trial_id: str
    config: dict
    status: str
    epochs: int
    best_epoch: int
    valid: dict[str, float]
    checkpoint_path: str | None  # the folder holding the best epoch's model.pt, where it lies now


class Experiment:
    """A search's folder or URI, with its trials that did not fail ranked by their best validation nDCG@10 in
    the protocol ``metric`` (``sampled`` or ``full``; by default the one the search selected on), ``monitor``
    its key. Ranking by the other protocol replays the selection a search on it would have made, from a search
    whose trials reported both (their checkpoints are the search's own metric's best epochs)."""

    def __init__(self, location: str, metric: str | None = None):
        self.location = resolved(location)
        self.filesystem, self.fs_path = filesystem(self.location)
        self.record = SearchRecord.read(self.location)
        self.metric = metric or self.record.settings.metric
        self.monitor = monitor_key(self.metric)
        self.analysis = ExperimentAnalysis(self.fs_path, storage_filesystem=self.filesystem,
                                           default_metric=self.monitor, default_mode="max")
        self.trials = self._summaries()

    @property
    def name(self) -> str:
        return self.fs_path.rstrip("/").rsplit("/", 1)[-1]

    def _summaries(self) -> list[TrialSummary]:
        frames = self.analysis.trial_dataframes
        summaries = []
        for trial in self.analysis.trials:
            if trial.status == "ERROR":
                continue  # a trial that failed (diverged, say) is never a candidate, however good it looked before
            frame = frames.get(trial.trial_id)
            if frame is None or self.monitor not in frame or frame[self.monitor].isna().all():
                continue
            best = best_epoch_row(frame, self.monitor)
            summaries.append(TrialSummary(
                trial.trial_id, dict(trial.config), trial.status, int(frame["epoch"].max()), int(best["epoch"]),
                valid_metrics(best), self._checkpoint(frame, trial)))
        return sorted(summaries, key=lambda s: s.valid[self.monitor], reverse=True)

    def _checkpoint(self, frame: pd.DataFrame, trial) -> str | None:
        """Where the trial's last checkpoint (the best epoch: one is written only on improvement) lies now.

        A trial that trained in its own process keeps it in its Tune folder (``checkpoint_dir_name``);
        a Ray Train trial under ``train/<trial id>/``. Ray records absolute paths for the latter, and
        the experiment may have been moved or copied since (a cluster's results synced to a laptop).
        """
        if "checkpoint_dir_name" in frame and frame["checkpoint_dir_name"].notna().any():
            trial_folder = trial.path.rstrip("/").rsplit("/", 1)[-1]  # Tune's path is a URI in the cloud
            return f"{self.fs_path}/{trial_folder}/{frame['checkpoint_dir_name'].dropna().iloc[-1]}"
        if "checkpoint_path" in frame and frame["checkpoint_path"].notna().any():
            recorded = frame["checkpoint_path"].dropna().iloc[-1]
            _, found, inside = recorded.partition(f"/train/{trial.trial_id}/")
            return f"{self.fs_path}/train/{trial.trial_id}/{inside}" if found else recorded
        return None

    def table(self) -> pd.DataFrame:
        """One row per trial: its hyperparameters, status, epochs run and best validation metrics."""
        return pd.DataFrame([{"trial_id": s.trial_id, **s.config, "status": s.status, "epochs": s.epochs,
                              "best_epoch": s.best_epoch, **s.valid} for s in self.trials])

    def fetch_checkpoint(self, trial: TrialSummary, into: Path) -> Path:
        """The trial's best checkpoint file, copied to a local folder (it may live in the cloud)."""
        if trial.checkpoint_path is None:
            raise FileNotFoundError(f"trial {trial.trial_id} reported no checkpoint")
        target = into / f"{trial.trial_id}.pt"
        with self.filesystem.open_input_stream(f"{trial.checkpoint_path}/{CHECKPOINT_FILE}") as reader, \
                open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer)
        return target
