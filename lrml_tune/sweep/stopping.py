"""Which trials stop early: ASHA (the default), asynchronous Hyperband, or none; and the rungs kept across a
driver's restart. The default and its grace period are measured choices: ``bench/search_efficiency.py`` and
``bench/budget.py`` (see ``bench/README.md``).
"""
from __future__ import annotations

import logging
import time

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from lrml.errors import UserError
from lrml_tune.sweep.state import read_state, state_exists, write_state
from lrml_tune.sweep.storage import brief, is_uri

SCHEDULERS = ("asha", "hyperband", "none")
DEFAULT_SCHEDULER = "asha"
DEFAULT_GRACE_PERIOD = 4  # epochs: the least that kept the best of 64 configurations (bench/budget.py)
REDUCTION_FACTOR = 3
HYPERBAND_BRACKETS = 3
CLOUD_SAVE_SECONDS = 2.0  # rungs on cloud storage at most this stale, as Tune's own experiment state (TUNE_SETTINGS)


def make_scheduler(name: str, max_epochs: int, grace_period: int, state_file: str | None = None) -> TrialScheduler:
    """ASHA (one bracket), asynchronous Hyperband (several brackets of ASHA, from the ASHA paper) or none.

    Both stoppers go by the trial's own ``epoch``, so a trial resumed from a checkpoint is judged at
    the right rung, and keep their rungs in ``state_file`` so that they survive the driver.
    """
    if name == "none":
        return FIFOScheduler()
    if name not in SCHEDULERS:
        raise UserError(f"scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return ResumableHyperBand(state_file, time_attr="epoch", max_t=max_epochs, grace_period=grace_period,
                              reduction_factor=REDUCTION_FACTOR,
                              brackets=HYPERBAND_BRACKETS if name == "hyperband" else 1)


class ResumableHyperBand(AsyncHyperBandScheduler):
    """Ray's asynchronous successive halving, whose rungs (every trial's value at each milestone) are
    written to ``state_file`` (a local file, or a URI at most ``CLOUD_SAVE_SECONDS`` behind) after each decision
    and read back when a resumed search starts.

    Ray saves the searcher with the experiment but not the scheduler: a resumed search would start
    with empty rungs and let every trial through until the rungs filled again.
    """

    def __init__(self, state_file: str | None, **kwargs):
        super().__init__(**kwargs)
        self.state_file = state_file
        self.saved_at = float("-inf")  # time.monotonic() of the last save to cloud storage

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        accepted = super().set_search_properties(metric, mode, **spec)
        if self.state_file and state_exists(self.state_file):
            self.__dict__.update(read_state(self.state_file), saved_at=float("-inf"))
        return accepted

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def _save(self) -> None:
        """The scheduler's whole state (what its public ``save`` pickles), written whole or not at all."""
        if not self.state_file:
            return
        if not is_uri(self.state_file):
            write_state(self.state_file, self.__dict__)
            return
        if time.monotonic() - self.saved_at < CLOUD_SAVE_SECONDS:
            return
        try:
            write_state(self.state_file, self.__dict__)
            self.saved_at = time.monotonic()
        except OSError as error:  # the storage is gone: the trials' own writes fail and stop the search
            logging.getLogger(__name__).warning("could not save the rungs to %s: %s", self.state_file, brief(error))
