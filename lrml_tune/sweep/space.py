"""Search spaces, declared per model in ``lrml_tune/sweep/default_spaces/<model>.json`` (or a file of the
user's) and read into typed parameters.

A parameter may apply only under a condition (``"when": {"loss": ["softmax"]}``: the temperature
matters only to the softmax loss) or have a range per value of an earlier choice (``"by":
"optimizer", "ranges": {"adam": [low, high], "adagrad": [low, high]}``: each optimizer its own
learning rates). Such a range becomes one parameter per value, named ``lr[adam]`` and
``lr[adagrad]`` in the Optuna study, each setting the trainer's ``lr``.

Each search starts from known settings inside its space: for every model the trainer's defaults
(`lrml.train.DEFAULTS`), and for LRML also ten times their regularisation (reg_weight 0.1).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from lrml.errors import UserError
from lrml.train import TrainConfig, defaults

SPACES = Path(__file__).with_name("default_spaces")
KINDS = ("choice", "loguniform", "uniform", "int")
NOT_SEARCHABLE = {"model", "max_epochs", "seed", "patience"}
EDGE_SHARE = 0.05  # a best value this close to a bound (as a share of its range, in log space if log) is "at" it


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a choice among ``values``, or a range ``low``..``high``, that sets the
    trainer's field ``sets`` when the fields already chosen match ``when``."""

    kind: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    sets: str = ""
    when: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self):
        if not self.sets:
            raise ValueError(f"a {self.kind} parameter needs the trainer field it sets")

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(self.values)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def applies(self, config: dict) -> bool:
        """Whether this parameter is searched for a configuration whose earlier fields are ``config``."""
        return all(config.get(name) in values for name, values in self.when.items())

    def allows(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return self.low <= value <= self.high

    def edge(self, value) -> str | None:
        """"lowest" or "highest" when ``value`` lies at that end of the range (or is the smallest or largest of
        numeric choices), else None. A count of 1 is no edge: there is nothing below it to offer."""
        if self.kind == "choice":
            numeric = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(numeric) < 3 or len(numeric) != len(self.values):
                return None
            if value == min(numeric):
                return None if value == 1 and isinstance(value, int) else "lowest"
            return "highest" if value == max(numeric) else None
        scale = math.log if self.kind == "loguniform" else float
        share = (scale(value) - scale(self.low)) / (scale(self.high) - scale(self.low))
        return "lowest" if share <= EDGE_SHARE else "highest" if share >= 1 - EDGE_SHARE else None

    def describe(self) -> str:
        bounds = list(self.values) if self.kind == "choice" else f"[{self.low:g}, {self.high:g}]"
        condition = "".join(f" when {name} is {'/'.join(map(str, values))}" for name, values in self.when.items())
        return f"{bounds}{condition}"


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
    space: dict[str, Param] = {}
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        if name not in known:
            raise UserError(f"{path}: {name!r} is not a hyperparameter; known: {', '.join(sorted(known))}")
        space.update(_params(path, name, entry, space))
    if not space:
        raise UserError(f"{path}: no hyperparameter to search")
    return space


def _params(path: Path, name: str, entry, earlier: dict[str, Param]) -> dict[str, Param]:
    """The parameters of one entry: itself, or one per value of the choice its ranges go ``by``."""
    if not isinstance(entry, dict) or entry.get("type") not in KINDS:
        raise UserError(f"{path}: {name!r} needs a 'type' among {', '.join(KINDS)}")
    when = _condition(path, name, entry.get("when", {}), earlier)
    if "by" not in entry:
        return {name: _param(path, name, entry, when)}
    choice = _choice(path, name, entry["by"], earlier)
    ranges = entry.get("ranges")
    if not isinstance(ranges, dict) or set(ranges) != {str(value) for value in choice.values}:
        raise UserError(f"{path}: {name!r} needs 'ranges' with one [low, high] for each {entry['by']} "
                        f"({', '.join(map(str, choice.values))})")
    found = {}
    for value in choice.values:
        bounds = ranges[str(value)]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise UserError(f"{path}: {name!r} range for {value!r} must be [low, high]; got {bounds!r}")
        variant = f"{name}[{value}]"
        found[variant] = _param(path, variant, {**entry, "low": bounds[0], "high": bounds[1]},
                                {**when, entry["by"]: (value,)}, sets=name)
    return found


def _choice(path: Path, name: str, by, earlier: dict[str, Param]) -> Param:
    """The earlier choice named by ``by``, which a condition or a range per value refers to."""
    choice = earlier.get(by)
    if choice is None or choice.kind != "choice" or choice.when:
        raise UserError(f"{path}: {name!r} depends on {by!r}, which must be an unconditional choice listed before it")
    return choice


def _condition(path: Path, name: str, when, earlier: dict[str, Param]) -> dict[str, tuple]:
    if not isinstance(when, dict):
        raise UserError(f"{path}: {name!r} 'when' must map a choice to the values it applies for")
    condition = {}
    for by, values in when.items():
        choice = _choice(path, name, by, earlier)
        values = values if isinstance(values, list) else [values]
        unknown = [value for value in values if value not in choice.values]
        if unknown:
            raise UserError(f"{path}: {name!r} applies when {by} is {unknown!r}, which {by} never is")
        condition[by] = tuple(values)
    return condition


def _param(path: Path, name: str, entry: dict, when: dict[str, tuple], sets: str = "") -> Param:
    kind, sets = entry["type"], sets or name
    if kind == "choice":
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: {name!r} is a choice and needs a non-empty list 'values'")
        return Param(kind, values=tuple(values), sets=sets, when=when)
    low, high = entry.get("low"), entry.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise UserError(f"{path}: {name!r} needs numbers 'low' < 'high'; got low={low!r}, high={high!r}")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{path}: {name!r} is loguniform and needs 'low' > 0; got {low!r}")
    return Param(kind, low=low, high=high, sets=sets, when=when)


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict:
    """A configuration (trainer fields) from ``trial``, asking only for the parameters that apply to it."""
    config = {}
    for name, param in space.items():
        if not param.applies(config):
            continue
        if param.kind == "choice":
            config[param.sets] = trial.suggest_categorical(name, param.values)
        elif param.kind == "int":
            config[param.sets] = trial.suggest_int(name, int(param.low), int(param.high))
        else:
            config[param.sets] = trial.suggest_float(name, param.low, param.high, log=param.kind == "loguniform")
    return config


def study_params(space: dict[str, Param], config: dict) -> dict:
    """``config``'s values under the study's parameter names, for the parameters that apply to it."""
    return {name: config[param.sets] for name, param in space.items() if param.applies(config)}


def starting_points(model: str, space: dict[str, Param]) -> list[dict]:
    """The known settings to try first (study parameter names), restricted to the space: a field the space fixes
    (an unconditional choice of one value) takes that value, and a point with another value outside it is skipped."""
    known = asdict(defaults(model))
    fixed = {param.sets: param.values[0] for param in space.values()
             if param.kind == "choice" and len(param.values) == 1 and not param.when}
    candidates = [known] + ([{**known, "reg_weight": 0.1}] if model == "lrml" else [])
    points = []
    for point in candidates:
        chosen = study_params(space, {**point, **fixed})
        if all(space[name].allows(value) for name, value in chosen.items()) and chosen not in points:
            points.append(chosen)
    return points


def at_edges(space: dict[str, Param], config: dict) -> list[str]:
    """One line per value of ``config`` that lies at an end of its searched range: a sign the range was too narrow."""
    return [f"{param.sets}={_short(config[param.sets])} is the {edge} the space allows {param.describe()}"
            for param in space.values() if param.applies(config) and param.sets in config
            and (edge := param.edge(config[param.sets]))]


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def field_distributions(space: dict[str, Param]) -> dict[str, optuna.distributions.BaseDistribution]:
    """One distribution per trainer field the space searches, covering all of its parameters' ranges."""
    found: dict[str, Param] = {}
    for param in space.values():
        kept = found.get(param.sets)
        if kept is None:
            found[param.sets] = param
        elif param.kind != "choice":
            found[param.sets] = Param(param.kind, low=min(kept.low, param.low), high=max(kept.high, param.high),
                                      sets=param.sets)
    return {name: param.distribution() for name, param in found.items()}
