"""A search's wall-clock budget (``--time-budget``): Tune stops every trial and starts no more once the search has
run that long, over all its runs; a ``--resume`` goes on with what is left, and time while it was down does not
count. The time spent is kept beside the experiment (``time-budget.pickle``), at most a few seconds behind."""
from __future__ import annotations

import re
import time

from ray import tune
from ray.tune.stopper import Stopper

from lrml.errors import UserError
from lrml_tune.sweep.state import read_state, state_exists, write_state

BUDGET_FILE = "time-budget.pickle"  # not *.json or *.pkl: a resumed Tune copies those back over newer ones
SAVE_SECONDS = 2.0  # the time spent is written at most this often (and when the budget runs out)
UNITS = {"s": 1, "m": 60, "h": 3600}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str) -> float:
    """Seconds of ``90s``, ``10m``, ``1.5h``; a ``UserError`` naming the text otherwise."""
    found = DURATION.fullmatch(text.strip())
    if not found or float(found.group(1)) <= 0:
        raise UserError(f"--time-budget {text!r}: expected a positive number and a unit, such as 90s, 10m or 2h")
    return float(found.group(1)) * UNITS[found.group(2)]


def budget_state(location: str) -> dict:
    """What was spent and cut so far: ``spent`` seconds, ``ran_out`` and the trials ``cut`` when it ran out."""
    return read_state(location) if state_exists(location) else {"spent": 0.0, "ran_out": False, "cut": []}


class TimeBudget(Stopper, tune.Callback):
    """Both Tune's stopper (``stop_all``) and a callback: at the start of each step of Tune's loop it adds the time
    since the last, and once ``seconds`` are spent it notes the trials still running, which that step stops."""

    def __init__(self, seconds: float, location: str):
        self.seconds, self.location = seconds, location
        self._reset()

    def _reset(self) -> None:
        self.state: dict | None = None  # read from ``location`` at the first step of each run
        self.last: float | None = None
        self.saved_at = 0.0

    def __getstate__(self) -> dict:
        return {"seconds": self.seconds, "location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        if self.state is None:
            self.state = budget_state(self.location)
        elif not self.state["ran_out"]:
            self.state["spent"] += now - self.last
        self.last = now
        if not self.state["ran_out"] and self.state["spent"] >= self.seconds:
            self.state.update(ran_out=True, cut=[trial.trial_id for trial in trials if trial.status == "RUNNING"])
            self.saved_at = 0.0  # written now
        if now - self.saved_at >= SAVE_SECONDS:
            write_state(self.location, self.state)
            self.saved_at = now

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.state is not None:
            write_state(self.location, self.state)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials end by their own budget and the scheduler; this one ends them all at once

    def stop_all(self) -> bool:
        return bool(self.state and self.state["ran_out"])
