"""The tables of results/README.md, from the evaluation.json files that tune/best.py wrote, one per search seed.

Reads ``results/<dataset>-lrml-<searcher>-s<seed>/evaluation.json`` for every dataset and seed present and
writes the tables between the markers in results/README.md.

    python results/tables.py [--searcher tpe]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lrml_tune.comparison.markdown import write_section
from lrml_tune.comparison.stats import paired_randomization_test

RESULTS = Path(__file__).resolve().parent
LABELS = {"lrml": "LRML", "cml": "CML", "bpr": "BPR-MF", "ease": "EASE", "pop": "popularity"}
TUNED = ("lrml", "cml", "bpr", "ease")
PROTOCOLS = ("sampled", "full")
START, END = "<!-- tables: start -->", "<!-- tables: end -->"


def load(searcher: str) -> dict[str, dict[int, dict[str, dict]]]:
    """dataset -> search seed -> model -> its row of evaluation.json."""
    found: dict[str, dict[int, dict[str, dict]]] = {}
    for path in sorted(RESULTS.glob(f"*-lrml-{searcher}-s*/evaluation.json")):
        dataset, seed = re.fullmatch(rf"(.+)-lrml-{searcher}-s(\d+)", path.parent.name).groups()
        found.setdefault(dataset, {})[int(seed)] = {row["model"]: row for row in json.loads(path.read_text())}
    return found


def tuned_value(row: dict, protocol: str) -> float:
    """The chosen configuration's test nDCG@10: its retrains' mean, or its one fit (EASE)."""
    if row["candidates"]:
        return row["candidates"][0]["runs"]["test"][protocol]["ndcg@10"]["mean"]
    return row["test"][protocol]["ndcg@10"]["mean"]


def defaults_value(row: dict, protocol: str) -> float:
    return row["defaults"]["test"][protocol]["ndcg@10"]["mean"]


def against_defaults(results: dict) -> list[str]:
    """Each search seed's chosen configuration against the model's defaults trained to convergence."""
    lines = ["### Tuned against not tuning", "",
             "Test nDCG@10. Tuned: each search seed's chosen configuration, the mean of its three retrains (seeds "
             "1-3), per search seed. Defaults: the model's `lrml.train.DEFAULTS` trained to convergence (up to 100 "
             "epochs, patience 10) with seeds 1-3, mean ± sd. EASE: one fit each, deterministic.", "",
             "| dataset | model | protocol | tuned, per search seed | defaults | lowest tuned − defaults | holds |",
             "|---|---|---|---|---:|---:|---|"]
    for dataset, seeds in results.items():
        for model in TUNED:
            for protocol in PROTOCOLS:
                rows = [seeds[seed][model] for seed in sorted(seeds)]
                tuned = [tuned_value(row, protocol) for row in rows]
                base = rows[0]["defaults"]["test"][protocol]["ndcg@10"]
                spread = f" ± {base['sd']:.4f}" if "sd" in base else ""
                gap = min(tuned) - base["mean"]
                lines.append(f"| {dataset} | {LABELS[model]} | {protocol} | {', '.join(f'{v:.4f}' for v in tuned)} | "
                             f"{base['mean']:.4f}{spread} | {gap:+.4f} | {'yes' if gap >= 0 else '**no**'} |")
    return lines + [""]


def comparison(results: dict) -> list[str]:
    """Every model's chosen checkpoint on test, seed by seed, with intervals and the p-value against LRML."""
    lines = ["### Each model's chosen checkpoint on test", "",
             "Test nDCG@10 with its 95% bootstrap interval over test users; p: paired randomisation test against "
             "LRML on per-user nDCG@10. One row per search seed.", "",
             "| dataset | seed | model | sampled | p vs LRML | full | p vs LRML |", "|---|---:|---|---:|---:|---:|---:|"]
    for dataset, seeds in results.items():
        for seed in sorted(seeds):
            for model, row in seeds[seed].items():
                cells = [dataset, str(seed), LABELS[model]]
                for protocol in PROTOCOLS:
                    value = row["test"][protocol]["ndcg@10"]
                    p = row["p_values"].get("lrml", {}).get(protocol)
                    cells += [f"{value['mean']:.4f} [{value['ci95'][0]:.4f}, {value['ci95'][1]:.4f}]",
                              "" if p is None else f"{p:.3g}"]
                lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def pooled_p(folders: list[Path], first: str, second: str, protocol: str) -> str:
    """The paired randomisation test of two models on each test user's nDCG@10 averaged over the search seeds
    (``per_user.parquet`` of each seed's folder); empty when a seed has no such file."""
    if not all((folder / "per_user.parquet").exists() for folder in folders):
        return ""
    frames = [pd.read_parquet(folder / "per_user.parquet") for folder in folders]
    means = pd.concat(frames).query("protocol == @protocol").groupby(["model", "user"])["ndcg@10"].mean()
    return f"{paired_randomization_test(means[first].sort_index(), means[second].sort_index()):.3g}"


def winners(results: dict, searcher: str) -> list[str]:
    """Which model wins each protocol on each dataset, by how much over the runner-up, and the p-values."""
    lines = ["### Who wins", "",
             "Per dataset and protocol: the model with the best mean test nDCG@10 over the search seeds (each seed's "
             "chosen checkpoint), its margin over the runner-up, and the paired test of the two: seed by seed, and "
             "on each test user's nDCG@10 averaged over the seeds (pooled).", "",
             "| dataset | protocol | best | mean | runner-up | mean | margin | p per seed | p pooled |",
             "|---|---|---|---:|---|---:|---:|---|---:|"]
    for dataset, seeds in results.items():
        folders = [RESULTS / f"{dataset}-lrml-{searcher}-s{seed}" for seed in sorted(seeds)]
        for protocol in PROTOCOLS:
            means = {model: np.mean([seeds[seed][model]["test"][protocol]["ndcg@10"]["mean"] for seed in seeds])
                     for model in seeds[min(seeds)]}
            first, second = sorted(means, key=means.get, reverse=True)[:2]
            p = [seeds[seed][first]["p_values"][second][protocol] for seed in sorted(seeds)]
            lines.append(f"| {dataset} | {protocol} | {LABELS[first]} | {means[first]:.4f} | {LABELS[second]} | "
                         f"{means[second]:.4f} | {means[first] - means[second]:+.4f} | {', '.join(f'{v:.3g}' for v in p)} "
                         f"| {pooled_p(folders, first, second, protocol)} |")
    return lines + [""]


def runs_drop(runs: dict) -> float:
    """Validation minus test, sampled nDCG@10, of retrains' means (``retrain.spread``'s layout)."""
    return runs["valid"]["sampled"]["ndcg@10"]["mean"] - runs["test"]["sampled"]["ndcg@10"]["mean"]


def selection(results: dict) -> list[str]:
    """The remedy for validation noise, measured: the search's single best trial against the best of its top
    three by the retrains' mean validation, on test (the retrains' means)."""
    rows, gains = [], {protocol: [] for protocol in PROTOCOLS}
    for dataset, seeds in results.items():
        for seed in sorted(seeds):
            for model in ("lrml", "cml", "bpr"):
                candidates = seeds[seed][model]["candidates"]
                if len(candidates) < 2:
                    continue  # best.py --candidates 1: nothing was chosen among
                top = max(candidates, key=lambda candidate: candidate["search_valid"])
                chosen = candidates[0]
                cells = [dataset, str(seed), LABELS[model], "same" if top is chosen else "other"]
                for protocol in PROTOCOLS:
                    single = top["runs"]["test"][protocol]["ndcg@10"]["mean"]
                    picked = chosen["runs"]["test"][protocol]["ndcg@10"]["mean"]
                    gains[protocol].append(picked - single)
                    cells += [f"{single:.4f}", f"{picked:.4f}"]
                drop = chosen["search_valid"] - seeds[seed][model]["test"]["sampled"]["ndcg@10"]["mean"]
                drops = [drop, runs_drop(chosen["runs"]), runs_drop(seeds[seed][model]["defaults"])]
                rows.append("| " + " | ".join(cells + [f"{value:+.4f}" for value in drops]) + " |")
    summary = "; ".join(
        f"{protocol}: mean {np.mean(values):+.4f}, better in {sum(v > 0 for v in values)}, worse in "
        f"{sum(v < 0 for v in values)} of {len(values)}" for protocol, values in gains.items())
    return ["### Choosing a configuration: the single best trial or the best retrained mean", "",
            "Test nDCG@10 (the mean of three retrains) of the search's single best trial by validation, and of the "
            "configuration chosen among the top three by its retrains' mean validation nDCG@10 (the seeds "
            "`best.py` ran with `--candidates` 2 or more). Drop: validation minus test, sampled nDCG@10, of the "
            "chosen checkpoint (the search's validation number against its test), over the chosen configuration's "
            "retrains, and over the model's defaults, which no validation score chose: what the split alone "
            "takes.", "",
            "| dataset | seed | model | chosen is the best trial | sampled: best trial | sampled: chosen | "
            "full: best trial | full: chosen | drop, checkpoint | drop, retrains | drop, defaults |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows, "", f"Chosen minus best trial: {summary}.", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searcher", default="tpe", help="the searcher in the experiments' names")
    args = parser.parse_args()
    results = load(args.searcher)
    if not results:
        sys.exit(f"no results/*-lrml-{args.searcher}-s*/evaluation.json here: run tune/best.py first")
    lines = [START, "", *against_defaults(results), *winners(results, args.searcher), *comparison(results),
             *selection(results), END]
    write_section(RESULTS / "README.md", START, END, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
