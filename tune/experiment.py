"""Read a finished (or interrupted) search: every trial's reported epochs, its best epoch and checkpoint.

Works on a local folder or the cloud URI the search wrote to (through pyarrow's filesystems,
which Ray Tune also uses), and needs no running Ray.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs
from ray.tune import ExperimentAnalysis

from lrml.distributed import CHECKPOINT_FILE
from lrml.train import MONITOR

SEARCH_FILE = "lrml_search.json"


def best_epoch_row(frame: pd.DataFrame) -> pd.Series:
    """The reported epoch with the highest validation nDCG@10."""
    return frame.loc[frame[MONITOR].idxmax()]


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
    checkpoint_path: str | None


class Experiment:
    """A search's folder or URI, with its trials ranked by their best validation nDCG@10."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        self.filesystem, self.fs_path = pyarrow.fs.FileSystem.from_uri(
            self.location if "://" in self.location else str(Path(self.location).resolve()))
        self.analysis = ExperimentAnalysis(self.location, storage_filesystem=self.filesystem,
                                           default_metric=MONITOR, default_mode="max")
        self.settings = json.loads(self.read_text(SEARCH_FILE))
        self.trials = self._summaries()

    @property
    def name(self) -> str:
        return self.fs_path.rstrip("/").rsplit("/", 1)[-1]

    def read_text(self, relative: str) -> str:
        with self.filesystem.open_input_stream(f"{self.fs_path}/{relative}") as handle:
            return handle.read().decode()

    def _summaries(self) -> list[TrialSummary]:
        frames = self.analysis.trial_dataframes
        summaries = []
        for trial in self.analysis.trials:
            frame = frames.get(trial.trial_id)
            if frame is None or MONITOR not in frame or frame[MONITOR].isna().all():
                continue
            best = best_epoch_row(frame)
            checkpoint = best.get("checkpoint_path")
            summaries.append(TrialSummary(
                trial.trial_id, dict(trial.config), trial.status, int(frame["epoch"].max()), int(best["epoch"]),
                valid_metrics(best), self._here(checkpoint, trial.trial_id) if isinstance(checkpoint, str) else None))
        return sorted(summaries, key=lambda s: s.valid[MONITOR], reverse=True)

    def _here(self, recorded: str, trial_id: str) -> str:
        """Where a checkpoint recorded during the search is now. Ray records absolute paths, and the
        experiment may have been moved or copied since (a cluster's results synced to a laptop);
        every checkpoint lies under the experiment's ``train/<trial id>/``."""
        _, found, inside = recorded.partition(f"/train/{trial_id}/")
        return f"{self.fs_path}/train/{trial_id}/{inside}" if found else recorded

    def table(self) -> pd.DataFrame:
        """One row per trial: its hyperparameters, status, epochs run and best validation metrics."""
        return pd.DataFrame([{"trial_id": s.trial_id, **s.config, "status": s.status, "epochs": s.epochs,
                              "best_epoch": s.best_epoch, **s.valid} for s in self.trials])

    def fetch_checkpoint(self, trial: TrialSummary, into: Path) -> Path:
        """The trial's best checkpoint file, copied to a local folder when it lives in the cloud."""
        if trial.checkpoint_path is None:
            raise FileNotFoundError(f"trial {trial.trial_id} reported no checkpoint")
        source = f"{trial.checkpoint_path}/{CHECKPOINT_FILE}"
        target = into / f"{trial.trial_id}.pt"
        with self.filesystem.open_input_stream(source) as reader, open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer)
        return target


def write_search_file(experiment: str, content: dict) -> None:
    """Write the search's settings and summary beside Tune's state (a folder or a cloud URI)."""
    location = experiment if "://" in experiment else str(Path(experiment).resolve())
    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path}/{SEARCH_FILE}") as handle:
        handle.write((json.dumps(content, indent=2, default=str) + "\n").encode())
