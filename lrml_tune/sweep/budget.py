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


# location -> the time spent, shared by every copy of a budget in this process: Tune unpickles the stopper and
# the callbacks of a restored search apart, so the copies must not keep it themselves
_SPENT: dict[str, dict] = {}


class TimeBudget(Stopper, tune.Callback):
    """Both Tune's stopper (``stop_all``) and a callback: at the start of each step of Tune's loop it adds the time
    since the last, and once ``seconds`` are spent it notes the trials still running, which that step stops."""

    def __init__(self, seconds: float, location: str):
        self.seconds, self.location = seconds, location

    def setup(self, **info) -> None:
        _SPENT.pop(self.location, None)  # each run of the search reads the time spent from the file

    @property
    def state(self) -> dict:
        """``spent``, ``ran_out``, ``cut`` (``budget_state``), with this process's clock (``last``, ``saved_at``)."""
        if self.location not in _SPENT:
            _SPENT[self.location] = {**budget_state(self.location), "last": None, "saved_at": 0.0}
        return _SPENT[self.location]

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        state, now = self.state, time.monotonic()
        if state["last"] is not None and not state["ran_out"]:
            state["spent"] += now - state["last"]
        state["last"] = now
        if not state["ran_out"] and state["spent"] >= self.seconds:
            state.update(ran_out=True, cut=[trial.trial_id for trial in trials if trial.status == "RUNNING"],
                         saved_at=0.0)  # written now
        if now - state["saved_at"] >= SAVE_SECONDS:
            self._save()
            state["saved_at"] = now

    def on_experiment_end(self, trials: list, **info) -> None:
        self._save()

    def _save(self) -> None:
        write_state(self.location, {key: self.state[key] for key in ("spent", "ran_out", "cut")})

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials end by their own budget and the scheduler; this one ends them all at once

    def stop_all(self) -> bool:
        return self.state["ran_out"]
