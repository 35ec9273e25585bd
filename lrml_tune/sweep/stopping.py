"""Which trials stop early: ASHA (the default), asynchronous Hyperband, or none, each judging a trial by the
seconds it has trained; and the rungs kept across a driver's restart. The default and its grace period are
measured choices: ``bench/search_efficiency.py`` and ``bench/budget.py`` (see ``bench/README.md``).
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
# in epochs of the first trial's time: over 3 seeds of the default search, 8 ended level with rungs by epochs in
# under half their time, 4 lower (bench/search_efficiency.py, bench/README.md)
DEFAULT_GRACE_PERIOD = 8
REDUCTION_FACTOR = 3
HYPERBAND_BRACKETS = 3
COST = "cost_epochs"  # the rungs' measure (CostRungs)
CLOUD_SAVE_SECONDS = 2.0  # rungs on cloud storage at most this stale, as Tune's own experiment state (TUNE_SETTINGS)


def make_scheduler(name: str, max_epochs: int, grace_period: int, state_file: str | None = None) -> TrialScheduler:
    """ASHA (one bracket), asynchronous Hyperband (several brackets of ASHA, from the ASHA paper) or none.

    Both stoppers judge a trial by the seconds it has trained, counted in epochs of the search's first
    trial (``CostRungs``), and keep their rungs in ``state_file`` so that they survive the driver.
    """
    if name == "none":
        return FIFOScheduler()
    if name not in SCHEDULERS:
        raise UserError(f"scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    # no trial is stopped for its cost alone past the last rung: max epochs and patience end it
    return CostRungs(state_file, time_attr=COST, max_t=max_epochs, grace_period=grace_period,
                     reduction_factor=REDUCTION_FACTOR, stop_last_trials=False,
                     brackets=HYPERBAND_BRACKETS if name == "hyperband" else 1)


class CostRungs(AsyncHyperBandScheduler):
    """Ray's asynchronous successive halving with rungs in seconds trained, counted in epochs of the first
    trial to reach the grace period (the model's defaults, which a search tries first), and kept across a
    driver's restart.

    By epochs, a configuration whose epoch costs ten times the defaults' (512 dimensions, 50 negatives)
    would train ten times as long before each rung; by seconds, every configuration is judged after the
    same time, as a search that keeps to a clock needs. A trial's seconds are its epochs' own
    (``total_seconds``: training and validation on the monitored protocol, not the other one that
    ``--report-both`` adds, continued from a resumed checkpoint). Until the unit
    is known, no trial is stopped; a trial already past a rung then meets it at its next report.

    Ray saves the searcher with the experiment but not the scheduler: a resumed search would start
    with empty rungs and let every trial through until the rungs filled again. So the whole state,
    the unit with it, is written to ``state_file`` (a local file, or a URI at most ``CLOUD_SAVE_SECONDS``
    behind) after each decision and read back when a resumed search starts.
    """

    def __init__(self, state_file: str | None, **kwargs):
        super().__init__(**kwargs)
        self.state_file = state_file
        self.saved_at = float("-inf")  # time.monotonic() of the last save to cloud storage
        self.grace_epochs = kwargs["grace_period"]
        self.epoch_seconds: float | None = None  # the unit: one epoch of the first trial to reach the grace period

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        accepted = super().set_search_properties(metric, mode, **spec)
        if self.state_file and state_exists(self.state_file):
            self.__dict__.update(read_state(self.state_file), saved_at=float("-inf"))
        return accepted

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.epoch_seconds is None and result.get("epoch", 0) >= self.grace_epochs:
            self.epoch_seconds = result["total_seconds"] / result["epoch"]
        if self.epoch_seconds is None:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, self._costed(result))
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if self.epoch_seconds is None:
            return
        super().on_trial_complete(tune_controller, trial, self._costed(result))
        self._save()

    def _costed(self, result: dict) -> dict:
        """``result`` with the seconds its trial has trained, in epochs of the unit, as the rungs count."""
        if "total_seconds" not in result:
            return result  # a result with no epoch in it: Ray leaves it unjudged
        return {**result, COST: result["total_seconds"] / self.epoch_seconds}

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
