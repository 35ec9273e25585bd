"""A search's record, ``lrml_search.json`` beside its experiment: the settings it ran with, the space it
searched, the prepared dataset, and once finished its outcome. Written once, versioned, and read back as
the same types by ``--resume`` and ``tune/best.py``."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

import pyarrow.fs

from lrml.errors import UserError
from lrml_tune.sweep.settings import SearchSettings
from lrml_tune.sweep.space import Param
from lrml_tune.sweep.storage import brief, filesystem

RECORD_FILE = "lrml_search.json"
RECORD_VERSION = 4  # 4: the space beside the settings, which name its file; the grace period as given


@dataclass(frozen=True)
class SearchOutcome:
    """How a finished search went: its best trial at its best epoch, and where its time went."""

    trials: int
    errors: int
    epochs_trained: int
    # The times are the last command's: a resumed search's earlier runs are not counted in them.
    wall_seconds: float  # the whole command, Ray's start and the data included
    search_started_at: float  # Unix time at which Tuner.fit began
    search_seconds: float  # Tuner.fit: the time the trial slots were open
    training_seconds: float  # inside the epochs this command trained (training and validation), summed over trials
    concurrency: int
    best_trial: str | None  # None when no trial reported a validation metric
    best_config: dict
    best_epoch: int
    best_trial_epochs: int  # epochs the best trial trained; its best epoch is its last when it was still improving
    best_valid: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)  # trial folder -> why it failed
    epochs_this_run: int | None = None  # of epochs_trained, those this command trained (fewer after a --resume)
    time_budget_seconds: float | None = None  # --time-budget, if the search had one
    budget_spent_seconds: float | None = None  # of it, spent over every run of the search
    trials_cut: list[str] = field(default_factory=list)  # the trials running when the budget ran out, stopped then
    cpu_seconds: float | None = None  # the trials' processes' CPU time in this command's epochs and between them
    cpus: float | None = None  # the cluster's CPUs when the search ended

    @property
    def still_improving(self) -> bool:
        """Whether the best trial's best epoch was the last it trained: more epochs might have helped it."""
        return self.best_trial is not None and self.best_epoch == self.best_trial_epochs

    @property
    def training_share(self) -> float:
        """Of the trial slots' time (search time x trials at once), the share spent inside epochs."""
        return self.training_seconds / (self.search_seconds * self.concurrency) if self.search_seconds else 0.0

    @property
    def cpu_use(self) -> float | None:
        """The trials' CPU time over the cluster's (search time x CPUs): how busy the search kept every core."""
        return self.cpu_seconds / (self.search_seconds * self.cpus) if self.search_seconds and self.cpus else None

    def time_spent(self) -> str:
        """Where the time went, in words; after a ``--resume``, the times and the share are the last run's."""
        resumed = self.epochs_this_run is not None and self.epochs_this_run != self.epochs_trained
        ran = f" ({self.epochs_this_run} in the last run, after a resume)" if resumed else ""
        slots = "the last run's" if resumed else "the"
        cpu = "" if self.cpu_use is None else f", the trials' CPU use {100 * self.cpu_use:.0f}% of {self.cpus:g} CPUs"
        budget = "" if self.time_budget_seconds is None else (
            f"; time budget {self.time_budget_seconds:.0f}s, {self.budget_spent_seconds:.0f}s used over every run"
            + (f", ran out: {len(self.trials_cut)} running trial(s) stopped" if self.trials_cut
               or self.budget_spent_seconds >= self.time_budget_seconds else ""))
        return (f"{self.trials} trials ({self.errors} failed), {self.epochs_trained} epochs{ran}; {self.wall_seconds:.0f}s "
                f"({self.search_seconds:.0f}s searching), {slots} {self.concurrency} trial slot(s) "
                f"{100 * self.training_share:.0f}% inside training epochs{cpu}{budget}")


@dataclass(frozen=True)
class SearchRecord:
    """``lrml_search.json``: the settings, the space searched, the prepared dataset, the outcome once finished."""

    settings: SearchSettings
    space: dict[str, Param]  # as searched: the file may have changed since
    dataset_path: str
    fingerprint: str
    outcome: SearchOutcome | None = None
    version: int = RECORD_VERSION

    def write(self) -> None:
        storage, path = filesystem(self.settings.experiment)
        storage.create_dir(path, recursive=True)
        with storage.open_output_stream(f"{path}/{RECORD_FILE}") as handle:
            handle.write((json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode())

    @staticmethod
    def exists(experiment: str) -> bool:
        storage, path = filesystem(experiment)
        return storage.get_file_info(f"{path}/{RECORD_FILE}").type == pyarrow.fs.FileType.File

    @classmethod
    def read(cls, experiment: str) -> "SearchRecord":
        storage, path = filesystem(experiment)
        try:
            with storage.open_input_stream(f"{path}/{RECORD_FILE}") as handle:
                data = json.loads(handle.read().decode())
        except FileNotFoundError:
            raise UserError(f"{experiment}: no {RECORD_FILE}; not a search made by tune/search.py") from None
        except OSError as error:  # storage that cannot be reached: a user's to fix, said in a line
            raise UserError(f"cannot read {experiment}/{RECORD_FILE}: {brief(error)}") from None
        if data.get("version") != RECORD_VERSION:
            raise UserError(f"{experiment}/{RECORD_FILE}: record version {data.get('version')!r}, this code reads "
                             f"{RECORD_VERSION}; run the search again with this version")
        return decode(cls, data)


def decode(kind, value):
    """``value`` (parsed JSON) as an instance of the annotated type ``kind``: dataclasses, optionals, dicts, tuples."""
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: decode(hints[f.name], value[f.name]) for f in dataclasses.fields(kind) if f.name in value})
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return decode(next(arg for arg in typing.get_args(kind) if arg is not type(None)), value)
    if origin is dict:
        _, item_kind = typing.get_args(kind)
        return {key: decode(item_kind, item) for key, item in value.items()}
    if kind is tuple or origin is tuple:
        return tuple(value)
    return value
