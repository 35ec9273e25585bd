"""Superseded checkpoints deleted only once no saved experiment state can still name them.

Tune deletes a trial's older checkpoint as soon as a newer one is registered, but the experiment state
a resume reads is saved every few seconds, and on cloud storage uploaded after that: a driver killed in
between leaves a state naming a checkpoint that is gone, and the resumed trial fails. So Tune keeps every
checkpoint, and ``CheckpointPruner`` deletes a trial's older ones once the checkpoint that superseded
them is older than any saved state can be; ``prune_superseded`` deletes the rest when the search ends.
"""
from __future__ import annotations

import time

import pyarrow.fs
from ray import tune

# Tune saves the experiment every 2 s (TUNE_GLOBAL_CHECKPOINT_S in sweep/driver.py) and warns when an upload
# takes 30 s: a checkpoint superseded a minute ago is named by no state a resume can read.
SAVED_STATE_LAG_SECONDS = 60.0


class CheckpointPruner(tune.Callback):
    """Delete each trial's checkpoints that a checkpoint registered at least ``lag`` seconds ago supersedes."""

    def __init__(self, lag: float = SAVED_STATE_LAG_SECONDS):
        self.lag = lag
        self.kept: dict[str, list[tuple[float, tune.Checkpoint]]] = {}  # trial id -> (registered at, checkpoint)

    def on_checkpoint(self, iteration, trials, trial, checkpoint: tune.Checkpoint, **info) -> None:
        now = time.monotonic()
        history = self.kept.setdefault(trial.trial_id, [])
        history.append((now, checkpoint))
        settled = [index for index, (registered, _) in enumerate(history) if now - registered >= self.lag]
        if settled:
            for _, superseded in history[:settled[-1]]:
                delete(superseded.filesystem, superseded.path)
            del history[:settled[-1]]


def prune_superseded(results: tune.ResultGrid) -> None:
    """When the search has finished, delete each trial's checkpoints older than the latest one Tune holds (its
    best epoch: one is written only on improvement). A later one, written before a driver was killed and
    unknown to the state it resumed from, stays: the trial's reported epochs name it."""
    for result in results:
        if result.checkpoint is None:
            continue
        storage, latest = result.checkpoint.filesystem, result.checkpoint.path.rstrip("/")
        trial_folder, latest_name = latest.rsplit("/", 1)
        for info in storage.get_file_info(pyarrow.fs.FileSelector(trial_folder)):
            # checkpoint_000003: Tune numbers a trial's checkpoints in order, with zeros in front
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_") \
                    and info.base_name < latest_name:
                delete(storage, info.path)


def delete(storage: pyarrow.fs.FileSystem, path: str) -> None:
    """Delete a checkpoint's folder; one already gone (deleted before a driver was killed) is no error."""
    try:
        storage.delete_dir(path)
    except FileNotFoundError:
        pass
