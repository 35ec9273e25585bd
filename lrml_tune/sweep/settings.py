"""``SearchSettings``: everything that decides a search, the one way into it. Each field carries its default,
its ``--help`` line and its check; ``tune/search.py``'s command line is generated from the fields, and a
settings object prints the command line that makes it again."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from lrml.data import get_release
from lrml.data.synthetic import is_synthetic, synthetic_shape
from lrml.errors import UserError
from lrml.evaluate import PROTOCOLS
from lrml.options import arguments, check_values, flag_name, option
from lrml.train import MODELS, TrainConfig, monitor_key
from lrml_tune.sweep.budget import parse_duration
from lrml_tune.sweep.space import default_space_file
from lrml_tune.sweep.stopping import DEFAULT_GRACE_PERIOD, DEFAULT_SCHEDULER, SCHEDULERS
from lrml_tune.sweep.storage import resolved
from lrml_tune.sweep.study import DEFAULT_SEARCHER, SEARCHERS

SEARCHABLE_MODELS = tuple(model for model in MODELS if model not in ("ease", "pop"))  # best.py tunes EASE itself
DEFAULT_STORAGE = str(Path("results") / "ray")  # under the folder the search is started from (the clone's root)
PROG = "python tune/search.py"


@dataclass(frozen=True)
class SearchSettings:
    """The data, the model and its space, the strategy, resources, storage and tracking of one search.

    Paths are made absolute as the settings are made, and ``name`` defaults to ``<dataset>-<model>``;
    ``dataclasses.replace`` gives a search that differs in the fields it names.
    """

    model: str = option("lrml", "the model to tune", choices=SEARCHABLE_MODELS)
    num_samples: int = option(64, "trials to run", at_least=1)
    dataset: str = option("ml-latest-small", "MovieLens release, or a synthetic shape such as synthetic-ml-20m")
    data_dir: str | None = option(None, "the release's archive or extracted folder (default: the bundled copy, or a "
                                        "download)")
    name: str = option("", "experiment name (default: <dataset>-<model>)")
    storage_path: str = option(DEFAULT_STORAGE, "where trials and checkpoints go: a folder, s3:// or gs://")
    seed: int = option(0, "seeds the searcher and every trial's training")
    max_epochs: int = option(TrainConfig.max_epochs, "epochs a trial may train if not stopped", at_least=1)
    patience: int = option(TrainConfig.patience, "a trial ends after this many epochs without a better validation "
                                                 "nDCG@10", at_least=1)
    metric: str = option(TrainConfig.monitor, "the validation nDCG@10 that chooses the best trial and stops trials "
                                              "early: the held-out item among 100 sampled items, or among every "
                                              "item", choices=PROTOCOLS)
    report_both: bool = option(False, "every trial also reports the other protocol's validation metrics every "
                                      "epoch, so the search can be read under either (full ranking scores every "
                                      "item each epoch: a slower search)")
    time_budget: str | None = option(None, "stop starting trials, and stop the running ones (each keeps its best "
                                           "checkpoint), once the search has run this long: 90s, 10m, 2h; a "
                                           "--resume goes on with what is left", metavar="DURATION")
    searcher: str = option(DEFAULT_SEARCHER, "how configurations are proposed", choices=SEARCHERS)
    scheduler: str = option(DEFAULT_SCHEDULER, "how weak trials are stopped early", choices=SCHEDULERS)
    grace_period: int | None = option(None, f"how long every trial trains before it may be stopped, in epochs of the "
                                            f"first trial to train that long (default {DEFAULT_GRACE_PERIOD}, or "
                                            f"--max-epochs if fewer); the rungs count seconds, so a costly trial "
                                            f"meets them in fewer epochs", at_least=1)
    space_file: str = option("", "search space JSON (default: the model's own, "
                                 "lrml_tune/sweep/default_spaces/<model>.json)", name="--space")
    workers_per_trial: int = option(1, "Ray Train workers per trial (data parallel); a second worker "
                                           "pays from about a million training pairs up (docs/speed.md)", at_least=1)
    sync_every: int | None = option(None, "a trial of several workers: steps each worker takes on its own users "
                                          "between exchanges of the shared tables (default: none on one machine, "
                                          "whose workers share the tables in memory; across machines, enough that "
                                          "exchanging costs about a tenth of training; 1: the exact global-batch "
                                          "gradient every step)", at_least=1)
    cpus_per_worker: float = option(1.0, "CPUs each worker reserves", above=0)
    fixed_threads: bool = option(False, "every one-worker trial trains on its own CPUs to its end (default: once "
                                        "no trial is left to start, the trials still running share their "
                                        "machines' idle CPUs; fixed threads repeat a trial's numbers to the bit)")
    gpus_per_worker: float = option(0.0, "GPUs each worker reserves", at_least=0)
    concurrency: int | None = option(None, "trials at once (default: as many as the cluster holds now; set it on a "
                                           "cluster that autoscales, which then adds the nodes these trials need)",
                                     at_least=1)
    max_failures: int = option(2, "restarts of a trial after a worker or node fails, from its last checkpoint",
                               at_least=0)
    worker_start_timeout: float = option(600.0, "seconds a trial's Ray Train workers may take to start before the "
                                                "attempt fails (an autoscaling cluster adds nodes meanwhile)",
                                         at_least=1)
    address: str | None = option(None, "Ray cluster to join ('auto': RAY_ADDRESS's or this machine's, "
                                                 "'ray://host:10001'); default: start a local Ray")
    node_ip_address: str | None = option(None, "this machine's address in the cluster, if Ray picks the wrong one")
    mlflow: str | None = option(None, "log every trial to MLflow (default store: mlflow.db in the experiment folder)",
                                metavar="TRACKING_URI", bare="")
    wandb: bool = option(False, "log every trial to Weights & Biases (needs wandb)")

    def __post_init__(self):
        """Refuse values no search can run with, naming the flag; make paths absolute and the name explicit."""
        check_values(self)
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if self.grace_period is not None and self.grace_period > self.max_epochs:
            raise UserError(f"{self._flag('grace_period')} {self.grace_period} is longer than "
                            f"{self._flag('max_epochs')} {self.max_epochs}")
        if is_synthetic(self.dataset):  # an unknown dataset names the known ones
            synthetic_shape(self.dataset)
            if self.data_dir:
                raise UserError(f"{self._flag('data_dir')} {self.data_dir}: {self.dataset} is generated, not read "
                                "from a folder")
        else:
            get_release(self.dataset)
        made = {"name": self.name or f"{self.dataset}-{self.model}", "storage_path": resolved(self.storage_path),
                "data_dir": self.data_dir and str(Path(self.data_dir).expanduser().resolve()),
                "space_file": self.space_file and str(Path(self.space_file).expanduser().resolve())}
        for field_name, value in made.items():
            object.__setattr__(self, field_name, value)

    def _flag(self, field_name: str) -> str:
        return flag_name(type(self), field_name)

    @property
    def experiment(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def time_budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget) if self.time_budget is not None else None

    @property
    def lends_cores(self) -> bool:
        """Whether the last trials share their machines' idle CPUs: one-worker trials on CPUs only."""
        return not self.fixed_threads and self.workers_per_trial == 1 and not self.gpus_per_worker

    @property
    def monitor(self) -> str:
        """The reported metric the search selects on and stops trials by (``--metric``'s validation nDCG@10)."""
        return monitor_key(self.metric)

    @property
    def grace_epochs(self) -> int:
        """How long every trial trains before the scheduler may stop it, in epochs of the first trial to train that
        long: ``grace_period``, or the default cut to a short budget."""
        return self.grace_period if self.grace_period is not None else min(DEFAULT_GRACE_PERIOD, self.max_epochs)

    @property
    def space_path(self) -> Path:
        """The search space file: the one given, or the model's default."""
        return Path(self.space_file) if self.space_file else default_space_file(self.model)

    @property
    def storage_given(self) -> bool:
        """Whether the storage is the user's choice rather than the local default."""
        return self.storage_path != resolved(DEFAULT_STORAGE)

    def arguments(self) -> list[str]:
        """The command-line arguments that make these settings again (those that differ from the defaults)."""
        return arguments(self)

    def command_line(self, prog: str = PROG) -> str:
        """The command that runs this search, quoted for a shell: for the user to copy."""
        return f"{prog} {shlex.join(self.arguments())}"
