"""A search's settings and outcome as typed, versioned records, written once beside the experiment
(``lrml_search.json``) and read back as the same types by ``--resume`` and ``tune/best.py``."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs

from lrml.data import get_release
from lrml.data.synthetic import is_synthetic, synthetic_shape
from lrml.errors import UserError
from lrml.train import TrainConfig
from lrml_tune.space import Param
from lrml_tune.strategy import DEFAULT_GRACE_PERIOD, DEFAULT_SCHEDULER, DEFAULT_SEARCHER

RECORD_FILE = "lrml_search.json"
RECORD_VERSION = 3  # 3: conditional space parameters (Param.sets, Param.when), patience


@dataclass(frozen=True)
class SearchSettings:
    """What the command line decided: the data, the model and its space, the strategy, resources and storage."""

    name: str
    storage_path: str  # a folder (absolute), s3://... or gs://...
    dataset: str = "ml-latest-small"
    data_dir: str | None = None
    model: str = "lrml"
    num_samples: int = 64
    max_epochs: int = TrainConfig.max_epochs
    patience: int = TrainConfig.patience
    grace_period: int = DEFAULT_GRACE_PERIOD
    searcher: str = DEFAULT_SEARCHER
    scheduler: str = DEFAULT_SCHEDULER
    seed: int = 0
    space_file: str = ""
    space: dict[str, Param] = field(default_factory=dict)
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    concurrency: int | None = None  # trials at once; None: as many as the cluster holds now
    max_failures: int = 2
    worker_start_timeout: float = 600.0  # seconds a Ray Train trial's workers may take to start, per attempt
    address: str | None = None  # None: start a local Ray
    node_ip_address: str | None = None
    mlflow: str | None = None  # None: no MLflow; "": an SQLite store in the experiment folder; else a tracking URI
    wandb: bool = False

    def __post_init__(self):
        """Refuse values no search can run with, naming the flag: the one place the settings are checked."""
        for flag, value in (("--num-samples", self.num_samples), ("--max-epochs", self.max_epochs),
                            ("--patience", self.patience), ("--grace-period", self.grace_period),
                            ("--workers-per-trial", self.workers_per_trial),
                            ("--worker-start-timeout", self.worker_start_timeout),
                            ("--concurrency", 1 if self.concurrency is None else self.concurrency)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1; got {value:g}")
        if self.max_failures < 0:
            raise UserError(f"--max-failures must be at least 0; got {self.max_failures}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise UserError(f"--cpus-per-worker must be above 0 and --gpus-per-worker at least 0; got "
                            f"{self.cpus_per_worker:g} and {self.gpus_per_worker:g}")
        if self.grace_period > self.max_epochs:
            raise UserError(f"--grace-period {self.grace_period} is longer than --max-epochs {self.max_epochs}")
        if is_synthetic(self.dataset):  # an unknown dataset names the known ones
            synthetic_shape(self.dataset)
            if self.data_dir:
                raise UserError(f"--data-dir {self.data_dir}: {self.dataset} is generated, not read from a folder")
        else:
            get_release(self.dataset)

    @property
    def experiment(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


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

    @property
    def still_improving(self) -> bool:
        """Whether the best trial's best epoch was the last it trained: more epochs might have helped it."""
        return self.best_trial is not None and self.best_epoch == self.best_trial_epochs

    @property
    def training_share(self) -> float:
        """Of the trial slots' time (search time x trials at once), the share spent inside epochs."""
        return self.training_seconds / (self.search_seconds * self.concurrency) if self.search_seconds else 0.0

    def time_spent(self) -> str:
        """Where the time went, in words; after a ``--resume``, the times and the share are the last run's."""
        resumed = self.epochs_this_run is not None and self.epochs_this_run != self.epochs_trained
        ran = f" ({self.epochs_this_run} in the last run, after a resume)" if resumed else ""
        slots = "the last run's" if resumed else "the"
        return (f"{self.trials} trials ({self.errors} failed), {self.epochs_trained} epochs{ran}; {self.wall_seconds:.0f}s "
                f"({self.search_seconds:.0f}s searching), {slots} {self.concurrency} trial slot(s) "
                f"{100 * self.training_share:.0f}% inside training epochs")


@dataclass(frozen=True)
class SearchRecord:
    """``lrml_search.json``: the settings, the prepared dataset they ran on, and the outcome once finished."""

    settings: SearchSettings
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
        if data.get("version") != RECORD_VERSION:
            raise UserError(f"{experiment}/{RECORD_FILE}: record version {data.get('version')!r}, this code reads "
                             f"{RECORD_VERSION}; run the search again with this version")
        return decode(cls, data)


def is_uri(location: str) -> bool:
    """Whether ``location`` names cloud storage (``s3://``, ``gs://``) rather than a local folder."""
    return "://" in location


def resolved(location: str) -> str:
    """A local folder made absolute (Tune needs it so), or a URI without a trailing slash."""
    return location.rstrip("/") if is_uri(location) else str(Path(location).expanduser().resolve())


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem of a folder or URI (Tune's own choice of filesystems) and the path within it."""
    return pyarrow.fs.FileSystem.from_uri(resolved(location))


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
