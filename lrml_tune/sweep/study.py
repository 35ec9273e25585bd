"""The Optuna study a search keeps (its sampler, its journal file) and the Ray Tune searcher over it, which
sees each trial as Optuna's own loop would.

Ray's ``OptunaSearch`` tells Optuna that a trial the scheduler stopped after 2 epochs is COMPLETE
with its 2-epoch score, so TPE models truncated scores as final results. Here every epoch is an
intermediate value, a trial the scheduler stopped is PRUNED (TPE ranks pruned trials by how far
they got, below every complete one), a trial that ended by itself (``last_epoch`` in its final
report: max epochs or patience) is COMPLETE with its best epoch's value, and an errored trial is FAIL.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from lrml.errors import UserError
from lrml_tune.sweep.space import Param, suggest
from lrml_tune.sweep.state import read_state, write_state
from lrml_tune.sweep.storage import is_uri

STUDY_FILE = "optuna-study.journal"
SEARCHERS = ("tpe", "random")
# TPE unless random search does measurably better: over 3 seeds of the default search both reached the same
# validation nDCG@10 in about the same time (bench/search_efficiency.py, bench/README.md)
DEFAULT_SEARCHER = "tpe"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, with a constant liar so concurrent trials spread out, and grouped so that parameters
    that apply only under a condition are modelled with the trials that had them) or uniform random sampling."""
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group: experimental in Optuna 5.0
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"searcher {name!r}; expected one of {', '.join(SEARCHERS)}")


def repair_journal(path: Path) -> str | None:
    """Make a study journal that a failed write left ending in part of a record readable again, by dropping that
    part; say so in a line (None when nothing was wrong). A journal damaged before its end is refused: which
    trials it recorded can no longer be known."""
    if not path.exists():
        return None
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1  # Optuna writes one JSON record a line
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        try:
            json.loads(line)
        except ValueError:
            raise UserError(f"{path}, line {number}: a damaged record before the journal's end; the study cannot be "
                            "resumed safely: start a new search (another --name)") from None
    if whole == len(data):
        return None
    with open(path, "r+b") as handle:
        handle.truncate(whole)
    return f"{path}: dropped the unfinished record at its end ({len(data) - whole} bytes), as a failed write left it"


def create_study(experiment: str, name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """A maximising study, kept in Optuna's journal file inside a local experiment folder (where
    ``optuna-dashboard`` and ``optuna.load_study`` open it), in memory for a cloud one."""
    storage = None
    if not is_uri(experiment):
        Path(experiment).mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(Path(experiment) / STUDY_FILE)))
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize")


class StudySearcher(Searcher):
    """Suggest ``num_samples`` configurations from ``study``'s sampler over ``space`` (asking only for the
    parameters that apply to each configuration), starting with ``starting_points`` (study parameter names).

    Given ``num_samples``, the searcher ends the search, not Tune's count (``SearcherEndsGenerator``): after a
    restore it counts the trials of the experiment state that Tune restored, which on cloud storage may have
    been uploaded a save apart from Tune's own count.
    """

    def __init__(self, space: dict[str, Param], study: optuna.Study, metric: str, mode: str = "max",
                 starting_points: list[dict] = (), step: str = "epoch", num_samples: int | None = None):
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.study = study
        self.step = step
        self.num_samples = num_samples
        for point in starting_points:
            study.enqueue_trial(point)
        self.suggested: set[str] = set()  # Tune trial ids, every one the experiment holds
        self.live: dict[str, optuna.Trial] = {}  # Tune trial id -> its Optuna trial
        self.last_step: dict[str, int] = {}
        self.best: dict[str, float] = {}

    def suggest(self, trial_id: str) -> dict | str:
        if self.num_samples is not None and len(self.suggested) >= self.num_samples:
            return Searcher.FINISHED
        self.suggested.add(trial_id)
        trial = self.study.ask()
        config = suggest(trial, self.space)
        trial.set_user_attr("tune_trial_id", trial_id)
        self.live[trial_id] = trial
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        if result:
            self._record(trial_id, result)  # Tune does not pass the result that made the scheduler stop a trial
        trial = self.live.pop(trial_id)
        best = self.best.pop(trial_id, None)
        self.last_step.pop(trial_id, None)
        # a trial told before the driver died and run again after --resume keeps its first verdict
        if error or best is None:
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        elif result and result.get("last_epoch"):
            self.study.tell(trial, best, skip_if_finished=True)
        else:
            self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)

    def _record(self, trial_id: str, result: dict) -> None:
        """Report a new epoch's value to the Optuna trial; a resumed trial's repeated epochs are skipped."""
        value, step = result.get(self.metric), result.get(self.step)
        trial = self.live.get(trial_id)
        if trial is None or value is None or step is None or step <= self.last_step.get(trial_id, 0):
            return
        try:
            trial.report(value, step)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # finished before the driver died; Tune runs it again from its checkpoint after --resume
        self.last_step[trial_id] = step
        previous = self.best.get(trial_id)
        if previous is None or (value > previous if self.mode == "max" else value < previous):
            self.best[trial_id] = value

    def save(self, checkpoint_path: str) -> None:
        write_state(checkpoint_path, self.__dict__)

    def restore(self, checkpoint_path: str) -> None:
        """Take back the state Tune saved, made to agree with the trials Tune restored; study trials no restored
        Tune trial runs are marked failed.

        Tune saves the searcher every few seconds, the study records every step at once: a driver
        killed in between leaves study trials that the restored Tune knows nothing of. On cloud storage
        Tune uploads its trials' state and the searcher's as separate files, so a driver killed while
        uploading leaves one a save older than the other.
        """
        self.__dict__.update(read_state(checkpoint_path))
        restored = tune_trials(Path(checkpoint_path).parent)
        if restored is not None:
            for trial_id in list(self.live):
                if trial_id not in restored:  # suggested after the trials' state was saved: it never runs
                    self.study.tell(self.live.pop(trial_id), state=TrialState.FAIL, skip_if_finished=True)
                elif restored[trial_id] == "TERMINATED":  # ended after the searcher's save: at its best so far
                    self.on_trial_complete(trial_id)
            self.suggested = set(restored)  # a restored trial the searcher had not seen yet runs unobserved
        known = {trial.number for trial in self.live.values()}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def tune_trials(folder: Path) -> dict[str, str] | None:
    """Each trial's id and status in the experiment state Tune restores from (``experiment_state-*.json``, which
    Tune has copied into the searcher's folder before restoring it); None where there is none."""
    states = sorted(folder.glob("experiment_state-*.json"))  # one a search; named by the time it started
    if not states:
        return None
    trials = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
    return {trial["trial_id"]: trial["status"] for trial in trials}


class SearcherEndsGenerator(SearchGenerator):
    """Tune's search generator over a ``StudySearcher`` that counts the trials itself (run it with Tune's
    ``num_samples=-1``), at most ``max_concurrent`` at once. Restored, it asks the searcher again whether the
    search is finished, and counts as running the trials the restored searcher awaits, rather than trust
    counts saved beside trials that may be a save older or newer."""

    def __init__(self, searcher: StudySearcher, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))

    def set_state(self, state: dict) -> None:
        super().set_state({**state, "finished": False})

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        limiter, searcher = self.searcher, self.searcher.searcher
        limiter.live_trials = set(searcher.live)
        limiter.num_unfinished_live_trials = len(searcher.live)
