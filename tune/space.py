"""The search space, declared once in ``space.json`` and read into Ray Tune distributions.

The starting points are the authors' defaults (this project's LRML defaults) and the seed
sketch's (margin 0.2, reg_weight 0.1), so the search begins from both published settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ray import tune

from lrml.train import TrainConfig, defaults

DEFAULT_SPACE = Path(__file__).with_name("space.json")
KINDS = {
    "choice": lambda spec: tune.choice(spec["values"]),
    "loguniform": lambda spec: tune.loguniform(spec["low"], spec["high"]),
    "uniform": lambda spec: tune.uniform(spec["low"], spec["high"]),
    "int": lambda spec: tune.randint(spec["low"], spec["high"] + 1),
}
AUTHORS = asdict(defaults("lrml"))
SEED_SKETCH = {**AUTHORS, "reg_weight": 0.1}


def load_space(path: str | Path = DEFAULT_SPACE) -> dict[str, dict]:
    """The raw space specification from a JSON file, checked so that a typo names the bad entry."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: not valid JSON: {error.msg}") from None
    spec = {name: entry for name, entry in spec.items() if not name.startswith("_")}
    known = set(TrainConfig.__dataclass_fields__) - {"model", "max_epochs", "seed"}
    for name, entry in spec.items():
        if name not in known:
            raise ValueError(f"{path}: {name!r} is not a hyperparameter; known: {sorted(known)}")
        if not isinstance(entry, dict) or entry.get("type") not in KINDS:
            raise ValueError(f"{path}: {name!r} needs a 'type' among {sorted(KINDS)}")
    return spec


def tune_space(spec: dict[str, dict]) -> dict:
    """Ray Tune distributions for each searched hyperparameter."""
    return {name: KINDS[entry["type"]](entry) for name, entry in spec.items()}


def starting_points(spec: dict[str, dict]) -> list[dict]:
    """The authors' and the sketch's settings, restricted to the searched names and to values the space allows."""
    points = []
    for point in (AUTHORS, SEED_SKETCH):
        chosen = {name: value for name, value in point.items() if name in spec and _allowed(spec[name], value)}
        if len(chosen) == len(spec) and chosen not in points:
            points.append(chosen)
    return points


def _allowed(entry: dict, value) -> bool:
    if entry["type"] == "choice":
        return value in entry["values"]
    return entry["low"] <= value <= entry["high"]
