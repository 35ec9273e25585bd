"""Quality and time to quality of the search strategies: TPE or random sampling, with ASHA, asynchronous
Hyperband or no early stopping, the same number of trials each, several seeds, in one run on one machine.

Each search is the default ``SearchSettings`` with its searcher, scheduler and seed, run as ``tune/search.py``
runs it (its own local Ray, one after another), with the search's default budget unless told otherwise.
From every trial's reported epochs it records the best validation nDCG@10 reached against the search's
wall time, then writes ``bench/search_efficiency.png``,
``bench/search_efficiency.csv`` and the table in ``bench/README.md``: each combination's final best
(mean over seeds), and how long each search took to reach its own final best, the lower of the
combinations' mean finals, and the validation score of LRML's defaults trained to convergence. That
training is timed once per dataset, as one trial trains (one process, one thread): the ASHA paper's bar is
a configuration as good in under twice the time of training one model.

The searches are named as ``tune/best.py`` expects of LRML searches (``<dataset>-lrml-<searcher>-s<seed>``),
so each one can be evaluated beside baselines searched the same way.

    python bench/search_efficiency.py                # ml-latest-small x 3 seeds x 64 trials, every combination
    python bench/search_efficiency.py --runs ml-latest-small:1:16                  # a quick look
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the defaults' training below runs as a one-CPU trial does

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrml.data import load_dataset, prepare  # noqa: E402
from lrml.train import Trainer, defaults, monitor_key  # noqa: E402
from lrml_tune import sweep  # noqa: E402
from lrml_tune.comparison.markdown import write_section  # noqa: E402
from lrml_tune.sweep import SearchRecord, SearchSettings  # noqa: E402
from lrml_tune.sweep.experiment import Experiment  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
COMBINATIONS = ("tpe+asha", "random+asha", "tpe+hyperband", "random+hyperband", "tpe+none", "random+none")
DATA_DIRS = {"ml-100k": str(REPO.parent / "shared" / "data" / "ml-100k")}
TABLE_START, TABLE_END = "<!-- search_efficiency: start -->", "<!-- search_efficiency: end -->"


def search_name(dataset: str, searcher: str, scheduler: str, seed: int) -> str:
    """``<dataset>-lrml-<searcher>[-<scheduler>]-s<seed>``: best.py finds its baselines as ``<dataset>-cml-...``."""
    return f"{dataset}-lrml-{searcher}{'' if scheduler == 'asha' else '-' + scheduler}-s{seed}"


def run_search(storage: Path, dataset: str, seed: int, searcher: str, scheduler: str, samples: int, args) -> Path:
    """One search, unless a finished one of that name is already in ``storage``; returns its folder."""
    budget = {name: value for name in ("max_epochs", "patience", "grace_period")
              if (value := getattr(args, name)) is not None}
    settings = SearchSettings(dataset=dataset, data_dir=DATA_DIRS.get(dataset), seed=seed, searcher=searcher,
                              scheduler=scheduler, num_samples=samples, storage_path=str(storage),
                              name=search_name(dataset, searcher, scheduler, seed), **budget)
    experiment = Path(settings.experiment)
    try:
        if SearchRecord.read(str(experiment)).outcome is not None:
            return experiment
    except ValueError:
        pass
    print(settings.command_line(), flush=True)
    if sweep.run(settings) != 0:
        raise SystemExit(f"the search {settings.name} did not finish")
    return experiment


def best_so_far(experiment: Path) -> pd.DataFrame:
    """(seconds since the search began, best validation nDCG@10 so far, in the search's metric) at every reported
    epoch."""
    found = Experiment(str(experiment))
    started, monitor = found.record.outcome.search_started_at, found.monitor
    rows = pd.concat([frame[["timestamp", monitor]] for frame in found.analysis.trial_dataframes.values()
                      if monitor in frame])
    rows = rows.sort_values("timestamp")
    return pd.DataFrame({"seconds": rows["timestamp"].to_numpy() - started, "best": rows[monitor].cummax().to_numpy()})


def defaults_reference(dataset: str, settings: SearchSettings) -> dict[str, float]:
    """LRML's defaults trained to convergence with the search's budget, as a trial trains: its best validation
    nDCG@10 and the wall seconds it took."""
    data = load_dataset(prepare(dataset, DATA_DIRS.get(dataset), progress=False))
    config = replace(defaults("lrml"), max_epochs=settings.max_epochs, patience=settings.patience,
                     monitor=settings.metric, validate_both=True)
    started = time.perf_counter()
    history = Trainer(config, data).fit(final_eval=False).history
    return {"valid": max(epoch[monitor_key(settings.metric)] for epoch in history),
            "seconds": time.perf_counter() - started}


def time_to(curve: pd.DataFrame, target: float) -> float:
    """Seconds until the curve first reaches ``target`` (inf if it never does)."""
    reached = curve[curve["best"] >= target - 1e-12]
    return float(max(reached["seconds"].iloc[0], 0.0)) if len(reached) else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=["ml-latest-small:3:64"],
                        help="DATASET:SEEDS:TRIALS, each seed one search of TRIALS trials per combination")
    parser.add_argument("--combinations", nargs="+", default=list(COMBINATIONS), help="SEARCHER+SCHEDULER")
    parser.add_argument("--max-epochs", type=int, help="default: the search's")
    parser.add_argument("--patience", type=int, help="default: the search's")
    parser.add_argument("--grace-period", type=int, help="default: the search's")
    parser.add_argument("--storage", default=str(REPO / "results" / "ray"))
    args = parser.parse_args()
    storage = Path(args.storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    rows, curves, references = [], {}, {}
    for run in args.runs:
        dataset, seeds, samples = run.split(":")
        settings = SearchSettings(**{name: value for name in ("max_epochs", "patience")
                                     if (value := getattr(args, name)) is not None})
        references[dataset] = defaults_reference(dataset, settings)
        print(f"{dataset}: LRML's defaults reached validation {references[dataset]['valid']:.4f} in "
              f"{references[dataset]['seconds']:.0f} s", flush=True)
        for seed in range(int(seeds)):
            for searcher, scheduler in (combination.split("+") for combination in args.combinations):
                experiment = run_search(storage, dataset, seed, searcher, scheduler, int(samples), args)
                outcome = SearchRecord.read(str(experiment)).outcome
                curve = best_so_far(experiment)
                curves[dataset, seed, searcher, scheduler] = curve
                rows.append({"dataset": dataset, "seed": seed, "trials": int(samples), "searcher": searcher,
                             "scheduler": scheduler, "final_best": curve["best"].iloc[-1],
                             "time_to_final": time_to(curve, curve["best"].iloc[-1]),
                             "defaults_valid": references[dataset]["valid"],
                             "defaults_seconds": references[dataset]["seconds"],
                             "time_to_defaults": time_to(curve, references[dataset]["valid"]),
                             "search_seconds": outcome.search_seconds, "epochs": outcome.epochs_trained,
                             "errors": outcome.errors})
    table = pd.DataFrame(rows)
    # a common target per dataset: the lowest of the combinations' mean final bests, which each can be timed to
    targets = table.groupby(["dataset", "searcher", "scheduler"])["final_best"].mean().groupby("dataset").min()
    table["time_to_target"] = [time_to(curves[r.dataset, r.seed, r.searcher, r.scheduler], targets[r.dataset])
                               for r in table.itertuples()]
    table.to_csv(BENCH / "search_efficiency.csv", index=False, float_format="%.4f")
    plot(curves, table)
    write_table(table, args)
    return 0


def plot(curves: dict, table: pd.DataFrame) -> None:
    datasets = list(dict.fromkeys(table["dataset"]))
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        combinations = list(dict.fromkeys(zip(table["searcher"], table["scheduler"])))
        for index, (searcher, scheduler) in enumerate(combinations):
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
    budget = " ".join(f"--{name.replace('_', '-')} {value}" for name in ("max_epochs", "patience", "grace_period")
                      if (value := getattr(args, name)) is not None)
    lines = [TABLE_START, "",
             f"`python bench/search_efficiency.py --runs {' '.join(args.runs)} --combinations "
             f"{' '.join(args.combinations)}{' ' + budget if budget else ''}` on {os.cpu_count()} CPUs, one run; each "
             "search 2 trials at a time, with the search's default budget unless named. Target: the lower of the "
             "combinations' mean final bests on that dataset. Defaults: LRML's defaults trained to convergence in one "
             "process of one thread, " + "; ".join(
                 f"{dataset} validation {group.defaults_valid.iloc[0]:.4f} in {group.defaults_seconds.iloc[0]:.0f} s"
                 for dataset, group in table.groupby("dataset", sort=False)) + "; × one training: the seconds to the "
             "defaults' validation over that time (the ASHA paper's bar is 2).", "",
             "| dataset | searcher + scheduler | trials | seeds | final best valid nDCG@10 (mean ± sd; per seed) | epochs "
             "| search seconds | seconds to its final best | seconds to the target (per seed) | seconds to the "
             "defaults' valid (per seed) | × one training (mean) |",
             "|---|---|---:|---:|---|---:|---:|---:|---|---|---:|"]
    for (dataset, searcher, scheduler), group in table.groupby(["dataset", "searcher", "scheduler"], sort=False):
        finals = group["final_best"].to_numpy()
        lines.append(f"| {dataset} | {searcher} + {scheduler} | {group.trials.iloc[0]} | {len(group)} | "
                     f"{finals.mean():.4f} ± {finals.std(ddof=1) if len(finals) > 1 else 0:.4f}; "
                     f"{', '.join(f'{value:.4f}' for value in finals)} | {group.epochs.mean():.0f} | "
                     f"{group.search_seconds.mean():.0f} | {_seconds(group.time_to_final.mean())} | "
                     f"{', '.join(_seconds(t) for t in group.time_to_target)} | "
                     f"{', '.join(_seconds(t) for t in group.time_to_defaults)} | "
                     f"{_ratio(group.time_to_defaults.mean() / group.defaults_seconds.iloc[0])} |")
    lines += ["", TABLE_END]
    write_section(BENCH / "README.md", TABLE_START, TABLE_END, lines)
    print("\n".join(lines))


def _seconds(value: float) -> str:
    return "never" if not np.isfinite(value) else f"{value:.0f}"


def _ratio(value: float) -> str:
    return "never" if not np.isfinite(value) else f"{value:.1f}x"


if __name__ == "__main__":
    sys.exit(main())
