"""How much budget a search needs: the learning curves of a search without early stopping, replayed under other
budgets (ASHA's grace period, a trial's patience, its maximum epochs).

A random search proposes the same configurations in the same order whatever stops them, so its curves
run to the end (no scheduler, a long patience) show what every shorter budget would have found:
each trial's epochs are replayed in the time order they took, two at a time, with ASHA's rule
(``ray.tune.schedulers.AsyncHyperBandScheduler``: at each rung, stop a trial below the
(1 - 1/3) quantile of the values recorded there so far) and early stopping after ``patience``
epochs without a better validation nDCG@10.

    python bench/budget.py --name budget-lrml [--model lrml] [--num-samples 64]   # runs the search if missing
"""
from __future__ import annotations

import argparse
import heapq
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lrml.train import MONITOR
from lrml_tune import sweep
from lrml_tune.sweep import Experiment, SearchRecord, SearchSettings
from lrml_tune.sweep.stopping import REDUCTION_FACTOR

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
STORAGE = REPO / "results" / "ray"
GRACE_PERIODS = (None, 1, 2, 4, 8, 12)  # None: no early stopping
PATIENCES = (5, 10, 15)
MAX_EPOCHS = (30, 50, 100)


@dataclass
class Curve:
    """One trial's validation metric and seconds per epoch, in the order the search started the trials."""

    trial: str
    values: np.ndarray
    seconds: np.ndarray

    def end(self, patience: int, max_epochs: int) -> int:
        """The epoch this trial would stop at by itself (1-based): ``patience`` epochs past its best, or the last."""
        best, best_epoch = -math.inf, 0
        for epoch, value in enumerate(self.values[:max_epochs], start=1):
            if value > best:
                best, best_epoch = value, epoch
            if epoch - best_epoch >= patience:
                return epoch
        return min(len(self.values), max_epochs)


def rungs(grace: int | None, max_epochs: int) -> list[int]:
    """ASHA's milestones for one bracket, as Ray computes them."""
    if grace is None:
        return []
    count = int(math.log(max_epochs / grace) / math.log(REDUCTION_FACTOR) + 1)
    return [grace * REDUCTION_FACTOR ** k for k in range(count)]


def replay(curves: list[Curve], grace: int | None, patience: int, max_epochs: int, slots: int) -> dict:
    """What a search of these configurations would have found under this budget: its best value, the epochs it
    trained and its time, with trials started in order on the first free slot."""
    milestones, recorded = set(rungs(grace, max_epochs)), {}
    events: list[tuple[float, int, int]] = []  # (when an epoch ends, trial index, epoch)
    started = epochs = 0
    best, now = -math.inf, 0.0

    def start_next(at: float) -> None:
        nonlocal started
        if started < len(curves):
            heapq.heappush(events, (at + float(curves[started].seconds[0]), started, 1))
            started += 1

    for _ in range(slots):
        start_next(0.0)
    while events:
        now, index, epoch = heapq.heappop(events)
        curve, epochs = curves[index], epochs + 1
        value = float(curve.values[epoch - 1])
        best = max(best, value)
        stop = epoch >= curve.end(patience, max_epochs)
        if epoch in milestones:
            rung = recorded.setdefault(epoch, {})
            stop |= bool(rung) and value < np.nanpercentile(list(rung.values()), (1 - 1 / REDUCTION_FACTOR) * 100)
            rung[index] = value
        if stop:
            start_next(now)
        else:
            heapq.heappush(events, (now + float(curve.seconds[epoch]), index, epoch + 1))
    return {"epochs": epochs, "seconds": now, "best": best}


def load_curves(location: str) -> list[Curve]:
    experiment = Experiment(location)
    frames = experiment.analysis.trial_dataframes
    return [Curve(trial.trial_id, frames[trial.trial_id].sort_values("epoch")[MONITOR].to_numpy(),
                  frames[trial.trial_id].sort_values("epoch")["seconds"].to_numpy())
            for trial in experiment.analysis.trials if trial.trial_id in frames and MONITOR in frames[trial.trial_id]]


def run_search(name: str, model: str, num_samples: int, max_epochs: int, patience: int) -> str:
    """The search without early stopping, random sampling (so nothing is learnt from stopped trials), run if missing."""
    settings = SearchSettings(name=name, model=model, num_samples=num_samples, max_epochs=max_epochs,
                              patience=patience, searcher="random", scheduler="none", storage_path=str(STORAGE))
    if not (SearchRecord.exists(settings.experiment) and SearchRecord.read(settings.experiment).outcome):
        print(settings.command_line(), flush=True)
        if sweep.run(settings) != 0:
            raise SystemExit(f"the search {name} did not finish")
    return settings.experiment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="budget-lrml", help="the search without early stopping (run if missing)")
    parser.add_argument("--model", default="lrml")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--max-epochs", type=int, default=max(MAX_EPOCHS))
    parser.add_argument("--patience", type=int, default=max(PATIENCES))
    parser.add_argument("--slots", type=int, default=2, help="trials at once in the replay (the search's concurrency)")
    args = parser.parse_args()
    curves = load_curves(run_search(args.name, args.model, args.num_samples, args.max_epochs, args.patience))
    ends = np.array([curve.end(args.patience, args.max_epochs) for curve in curves])
    best_epochs = np.array([int(curve.values[:end].argmax()) + 1 for curve, end in zip(curves, ends)])
    top = np.argsort([-curve.values.max() for curve in curves])[:5]
    print(f"{len(curves)} trials of {args.name}: best epochs, quartiles {np.percentile(best_epochs, [25, 50, 75])}, "
          f"the 5 best trials' {best_epochs[top].tolist()}; {(ends == args.max_epochs).sum()} reached "
          f"--max-epochs {args.max_epochs}")
    rows = [{"grace": grace or "none", "patience": patience, "max_epochs": max_epochs,
             **replay(curves, grace, patience, max_epochs, args.slots)}
            for max_epochs in MAX_EPOCHS for patience in PATIENCES for grace in GRACE_PERIODS]
    table = pd.DataFrame(rows)
    table["best_rank"] = table["best"].map(lambda value: int((np.array([c.values.max() for c in curves]) > value).sum()) + 1)
    table.to_csv(HERE / f"{args.name}.csv", index=False, float_format="%.4f")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
