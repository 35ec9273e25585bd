"""Time to quality of the search strategies: TPE or random sampling, with ASHA or without early
stopping, the same number of trials each, several seeds, in one run on one machine.

Each search is ``tune/search.py`` as a user runs it (its own local Ray, one after another). From
every trial's reported epochs it records the best validation nDCG@10 reached against the search's
wall time, then writes ``bench/search_efficiency.png``, ``bench/search_efficiency.csv`` and the table
in ``bench/README.md``. The yardstick is random search without early stopping: how long each
combination takes to reach that search's final best, seed by seed.

    python bench/search_efficiency.py                # ml-latest-small x 3 seeds x 64 trials, ml-100k x 1 x 32
    python bench/search_efficiency.py --runs ml-latest-small:1:16                  # a quick look
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrml.train import MONITOR  # noqa: E402
from lrml_tune.experiment import Experiment  # noqa: E402
from lrml_tune.settings import SearchRecord  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
COMBINATIONS = (("tpe", "asha"), ("tpe", "none"), ("random", "asha"), ("random", "none"))
YARDSTICK = ("random", "none")
DATA_DIRS = {"ml-100k": REPO.parent / "shared" / "data" / "ml-100k"}
TABLE_START, TABLE_END = "<!-- search_efficiency: start -->", "<!-- search_efficiency: end -->"


def run_search(storage: Path, dataset: str, seed: int, searcher: str, scheduler: str, samples: int, args) -> Path:
    """One search, unless a finished one of that name is already in ``storage``; returns its folder."""
    name = f"{dataset}-{searcher}-{scheduler}-s{seed}"
    experiment = storage / name
    try:
        if SearchRecord.read(str(experiment)).outcome is not None:
            return experiment
    except ValueError:
        pass
    command = [sys.executable, str(REPO / "tune" / "search.py"), "--dataset", dataset, "--seed", str(seed),
               "--searcher", searcher, "--scheduler", scheduler, "--num-samples", str(samples),
               "--max-epochs", str(args.max_epochs), "--name", name, "--storage-path", str(storage)]
    if dataset in DATA_DIRS:
        command += ["--data-dir", str(DATA_DIRS[dataset])]
    print(f"{name} ...", flush=True)
    with open(storage / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return experiment


def best_so_far(experiment: Path) -> pd.DataFrame:
    """(seconds since the search began, best validation nDCG@10 so far) at every reported epoch."""
    found = Experiment(str(experiment))
    started = found.record.outcome.search_started_at
    rows = pd.concat([frame[["timestamp", MONITOR]] for frame in found.analysis.trial_dataframes.values()
                      if MONITOR in frame])
    rows = rows.sort_values("timestamp")
    return pd.DataFrame({"seconds": rows["timestamp"].to_numpy() - started, "best": rows[MONITOR].cummax().to_numpy()})


def time_to(curve: pd.DataFrame, target: float) -> float:
    """Seconds until the curve first reaches ``target`` (inf if it never does)."""
    reached = curve[curve["best"] >= target - 1e-12]
    return float(max(reached["seconds"].iloc[0], 0.0)) if len(reached) else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["ml-latest-small:3:64", "ml-100k:1:32"],
                        help="DATASET:SEEDS:TRIALS, each seed one search of TRIALS trials per combination")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--storage", default=str(REPO / "results" / "ray" / "search-efficiency"))
    args = parser.parse_args()
    storage = Path(args.storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for run in args.runs:
        dataset, seeds, samples = run.split(":")
        for seed in range(int(seeds)):
            for searcher, scheduler in COMBINATIONS:
                experiment = run_search(storage, dataset, seed, searcher, scheduler, int(samples), args)
                outcome = SearchRecord.read(str(experiment)).outcome
                curve = best_so_far(experiment)
                curves[dataset, seed, searcher, scheduler] = curve
                rows.append({"dataset": dataset, "seed": seed, "trials": int(samples), "searcher": searcher,
                             "scheduler": scheduler,
                             "final_best": curve["best"].iloc[-1], "search_seconds": outcome.search_seconds,
                             "epochs": outcome.epochs_trained, "errors": outcome.errors})
    table = pd.DataFrame(rows)
    yardstick = table[(table.searcher == YARDSTICK[0]) & (table.scheduler == YARDSTICK[1])]
    targets = {(r.dataset, r.seed): r.final_best for r in yardstick.itertuples()}
    table["time_to_yardstick"] = [time_to(curves[r.dataset, r.seed, r.searcher, r.scheduler], targets[r.dataset, r.seed])
                                  for r in table.itertuples()]
    table.to_csv(BENCH / "search_efficiency.csv", index=False, float_format="%.4f")
    plot(curves, table)
    write_table(table, args)
    return 0


def plot(curves: dict, table: pd.DataFrame) -> None:
    datasets = list(dict.fromkeys(table["dataset"]))
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for index, (searcher, scheduler) in enumerate(COMBINATIONS):
            for (d, seed, s, c), curve in curves.items():
                if (d, s, c) == (dataset, searcher, scheduler):
                    axis.step(curve["seconds"], curve["best"], where="post", color=f"C{index}", alpha=0.8,
                              label=f"{searcher} + {scheduler}" if seed == 0 else None)
        axis.set(xlabel="wall seconds since the search began", ylabel="best validation nDCG@10 so far",
                 title=f"{dataset} ({table[table.dataset == dataset].seed.nunique()} seed(s), one line each)")
        low = table[table.dataset == dataset]["final_best"].min()
        axis.set_ylim(low - 0.03, None)
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(BENCH / "search_efficiency.png", dpi=110)
    plt.close(figure)


def write_table(table: pd.DataFrame, args) -> None:
    """The summary table (means over seeds) between the markers in bench/README.md."""
    lines = [TABLE_START, "",
             f"`python bench/search_efficiency.py --runs {' '.join(args.runs)} --max-epochs {args.max_epochs}` on "
             f"{os.cpu_count()} CPUs, one run. Each search: the trials below, of up to {args.max_epochs} epochs, "
             "2 at a time. Yardstick: the final best of random search without early stopping of the same seed.", "",
             "| dataset | searcher + scheduler | trials | seeds | final best valid nDCG@10 (mean ± sd) | epochs "
             "| search seconds | seconds to the yardstick (per seed) | mean |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for (dataset, searcher, scheduler), group in table.groupby(["dataset", "searcher", "scheduler"], sort=False):
        times = group["time_to_yardstick"].to_numpy()
        lines.append(f"| {dataset} | {searcher} + {scheduler} | {group.trials.iloc[0]} | {len(group)} | "
                     f"{group.final_best.mean():.4f} ± "
                     f"{group.final_best.std(ddof=1) if len(group) > 1 else 0:.4f} | {group.epochs.mean():.0f} | "
                     f"{group.search_seconds.mean():.0f} | {', '.join(_seconds(t) for t in times)} | "
                     f"{_seconds(np.mean(times))} |")
    lines += ["", TABLE_END]
    readme = BENCH / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if TABLE_START in text:
        before, rest = text.split(TABLE_START, 1)
        text = before + "\n".join(lines) + rest.split(TABLE_END, 1)[1]
    else:
        text += "\n" + "\n".join(lines) + "\n"
    readme.write_text(text)
    print("\n".join(lines))


def _seconds(value: float) -> str:
    return "never" if not np.isfinite(value) else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
