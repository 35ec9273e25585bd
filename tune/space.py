"""Search spaces, declared per model in ``tune/spaces/<model>.json`` and read into typed parameters.

Each search starts from known settings inside its space: for every model the trainer's defaults
(`lrml.train.DEFAULTS`, tuned on ml-100k by this project), and for LRML also the seed sketch's
regularisation (reg_weight 0.1).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from lrml.errors import UserError
from lrml.train import TrainConfig, defaults

SPACES = Path(__file__).with_name("spaces")
KINDS = ("choice", "loguniform", "uniform", "int")
NOT_SEARCHABLE = {"model", "max_epochs", "seed"}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a choice among ``values``, or a range ``low``..``high``."""

    kind: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(self.values)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def allows(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return self.low <= value <= self.high


def default_space_file(model: str) -> Path:
    return SPACES / f"{model}.json"


def load_space(path: str | Path) -> dict[str, Param]:
    """The space in a JSON file, checked so that a mistake names the file, the entry and what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such space file") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}, line {error.lineno}: not valid JSON: {error.msg}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected an object of hyperparameter entries")
    known = set(TrainConfig.__dataclass_fields__) - NOT_SEARCHABLE
    space = {}
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        if name not in known:
            raise UserError(f"{path}: {name!r} is not a hyperparameter; known: {', '.join(sorted(known))}")
        space[name] = _param(path, name, entry)
    if not space:
        raise UserError(f"{path}: no hyperparameter to search")
    return space


def _param(path: Path, name: str, entry) -> Param:
    if not isinstance(entry, dict) or entry.get("type") not in KINDS:
        raise UserError(f"{path}: {name!r} needs a 'type' among {', '.join(KINDS)}")
    kind = entry["type"]
    if kind == "choice":
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: {name!r} is a choice and needs a non-empty list 'values'")
        return Param(kind, values=tuple(values))
    low, high = entry.get("low"), entry.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise UserError(f"{path}: {name!r} needs numbers 'low' < 'high'; got low={low!r}, high={high!r}")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{path}: {name!r} is loguniform and needs 'low' > 0; got {low!r}")
    return Param(kind, low=low, high=high)


def starting_points(model: str, space: dict[str, Param]) -> list[dict]:
    """The known settings to try first, restricted to the searched names; any outside the space is skipped."""
    known = asdict(defaults(model))
    candidates = [known] + ([{**known, "reg_weight": 0.1}] if model == "lrml" else [])  # the seed sketch's
    points = []
    for point in candidates:
        chosen = {name: point[name] for name in space}
        if all(param.allows(chosen[name]) for name, param in space.items()) and chosen not in points:
            points.append(chosen)
    return points
