"""results/README.md and the README's results block, built whole from the committed files, so that no number in
them can drift from the files it comes from.

Reads ``results/<dataset>-lrml-<searcher>-s<seed>/`` (what ``tune/best.py`` wrote: ``evaluation.json``,
``per_user.parquet``), ``results/memory/`` (``bench/memory_ablation.py``), ``results/metric/``
(``bench/metric_choice.py``) and ``results/ablation/ablation.json`` (``bench/ablation.py``).

    python results/tables.py           # write results/README.md and the README's results block
    python results/tables.py --check   # exit 1, naming the file, if the committed text is not a fresh build
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lrml.data.dataset import SplitParams
from lrml.evaluate import PROTOCOLS
from lrml_tune.comparison.markdown import replace_section
from lrml_tune.comparison.selection import RETRAIN_SEEDS
from lrml_tune.comparison.stats import RESAMPLES, paired_randomization_test
from lrml_tune.sweep import SearchSettings

RESULTS = Path(__file__).resolve().parent
LABELS = {"lrml": "LRML", "cml": "CML", "bpr": "BPR-MF", "ease": "EASE", "pop": "popularity"}
TRAINED = ("lrml", "cml", "bpr")  # retrained with seeds: their tuned-against-defaults cells have a spread
TUNED = (*TRAINED, "ease")
ARMS = ("memory", "one-slot")  # bench/memory_ablation.py's
SCHEDULER_WORDS = re.compile(r"scheduler \(([^)]*)\)")  # summary.md's "asha scheduler (rungs by ..., grace period N)"
START, END = "<!-- results: start -->", "<!-- results: end -->"  # the README's block


def load(root: Path, searcher: str) -> dict[str, dict[int, dict[str, dict]]]:
    """dataset -> search seed -> model -> its row of evaluation.json."""
    found: dict[str, dict[int, dict[str, dict]]] = {}
    for path in sorted(root.glob(f"*-lrml-{searcher}-s*/evaluation.json")):
        dataset, seed = re.fullmatch(rf"(.+)-lrml-{searcher}-s(\d+)", path.parent.name).groups()
        found.setdefault(dataset, {})[int(seed)] = {row["model"]: row for row in json.loads(path.read_text())}
    return dict(sorted(found.items(), key=lambda item: item[0] != "ml-latest-small"))  # the bundled dataset first


def load_memory(root: Path) -> dict[str, dict[int, dict[str, dict]]]:
    """dataset -> search seed -> arm -> result.json, its per-user test table under ``per_user``."""
    found: dict[str, dict[int, dict[str, dict]]] = {}
    for path in sorted((root / "memory").glob("memory-*/result.json")):
        record = json.loads(path.read_text())
        record["per_user"] = pd.read_parquet(path.parent / "per_user.parquet")
        found.setdefault(record["dataset"], {}).setdefault(record["seed"], {})[record["arm"]] = record
    return found


def folder(root: Path, dataset: str, searcher: str, seed: int) -> Path:
    return root / f"{dataset}-lrml-{searcher}-s{seed}"


def ndcg(row: dict, protocol: str) -> float:
    return row["test"][protocol]["ndcg@10"]["mean"]


def tuned_runs(row: dict, protocol: str) -> list[float]:
    """The chosen configuration's test nDCG@10 over its retrains, or its one fit (EASE)."""
    if row["candidates"]:
        return row["candidates"][0]["runs"]["test"][protocol]["ndcg@10"]["values"]
    return [ndcg(row, protocol)]


def default_runs(row: dict, protocol: str) -> list[float]:
    value = row["defaults"]["test"][protocol]["ndcg@10"]
    return value.get("values", [value["mean"]])


def exact_permutation_p(first: list[float], second: list[float]) -> float:
    """Two-sided exact test of two small samples: the share of all splits of the pooled values into groups of
    their sizes whose difference of means is at least the observed one in size."""
    pooled, observed = np.array(first + second), abs(np.mean(first) - np.mean(second))
    splits = [np.isin(np.arange(len(pooled)), chosen) for chosen in itertools.combinations(range(len(pooled)), len(first))]
    return float(np.mean([abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12 for mask in splits]))


def per_user_means(frames: list[pd.DataFrame], model: str, protocol: str) -> pd.Series:
    """Each test user's nDCG@10 of ``model``, averaged over the frames (search seeds)."""
    return (pd.concat(frames).query("model == @model and protocol == @protocol")
            .groupby("user")["ndcg@10"].mean().sort_index())


def pooled_p(frames: list[pd.DataFrame], first: str, second: str, protocol: str) -> float:
    """The paired randomisation test of two models on each test user's nDCG@10 averaged over the search seeds."""
    return paired_randomization_test(per_user_means(frames, first, protocol).to_numpy(),
                                     per_user_means(frames, second, protocol).to_numpy())


def per_user_frames(root: Path, dataset: str, searcher: str, seeds) -> list[pd.DataFrame] | None:
    """Every seed's ``per_user.parquet``, or None when a seed has none."""
    paths = [folder(root, dataset, searcher, seed) / "per_user.parquet" for seed in seeds]
    return [pd.read_parquet(path) for path in paths] if all(path.exists() for path in paths) else None


def p_text(p: float) -> str:
    return f"{p:.3g}"


# ---- the memory ablation

def arms_p(memory_arms: list[dict], one_slot_arms: list[dict], protocol: str) -> float:
    """The paired randomisation test of the two arms on each test user's nDCG@10, averaged over the seeds given."""
    return paired_randomization_test(*(per_user_means([arm["per_user"] for arm in arms], "lrml", protocol).to_numpy()
                                       for arms in (memory_arms, one_slot_arms)))


def memory_verdicts(memory: dict) -> dict[str, dict]:
    """Per dataset, the memory arm against the one-slot arm over the seeds where both finished: the seeds, and per
    protocol the checkpoints' test nDCG@10 differences per seed, their mean, the p per seed and the pooled p."""
    found = {}
    for dataset, seeds in memory.items():
        paired = {seed: arms for seed, arms in sorted(seeds.items()) if set(arms) == set(ARMS)}
        if not paired:
            continue
        found[dataset] = {"seeds": list(paired)}
        for protocol in PROTOCOLS:
            gaps = [ndcg(arms["memory"], protocol) - ndcg(arms["one-slot"], protocol) for arms in paired.values()]
            found[dataset][protocol] = {
                "gaps": gaps, "mean": float(np.mean(gaps)),
                "p": [arms_p([arms["memory"]], [arms["one-slot"]], protocol) for arms in paired.values()],
                "pooled": arms_p([arms["memory"] for arms in paired.values()],
                                 [arms["one-slot"] for arms in paired.values()], protocol)}
    return found


def memory_slots(root: Path) -> str:
    """The memory arm's slots, from its committed space file."""
    path = root / "memory" / "spaces" / "memory.json"
    values = json.loads(path.read_text())["memory_size"]["values"] if path.exists() else []
    return f"{min(values)} to {max(values)}" if values else "several"


def answered(question: str, clauses: list[str], missing: list[str]) -> str:
    """``**question** Clause; clause.``: one clause per dataset measured, then the datasets not measured yet."""
    answer = "; ".join(clauses)
    return (f"**{question}** " + answer[0].upper() + answer[1:]
            + (f". Not measured yet on {', '.join(missing)}." if missing else "."))


def memory_sentence(verdicts: dict, datasets, slots: str) -> str:
    """The answer to "does LRML's memory help?", one clause per dataset, from what has been measured."""
    clauses, missing = [], []
    for dataset in datasets:
        verdict = verdicts.get(dataset)
        if verdict is None:
            missing.append(dataset)
            continue
        effects = [f"{verdict[protocol]['mean']:+.4f} {protocol} (p {p_text(verdict[protocol]['pooled'])})"
                   for protocol in PROTOCOLS]
        significant = [protocol for protocol in PROTOCOLS if verdict[protocol]["pooled"] < 0.05]
        helps = ("helps" if all(verdict[p]["mean"] > 0 for p in significant) else "hurts") if significant else \
            "makes no significant difference"
        seeds = f"search seed{'s' if len(verdict['seeds']) > 1 else ''} {', '.join(map(str, verdict['seeds']))}"
        clauses.append(f"on {dataset} ({seeds}) it {helps}: forcing "
                       f"{slots} slots against one slot moves test nDCG@10 by {' and '.join(effects)}")
    if not clauses:
        return "**Does LRML's memory help?** Not measured yet (`bench/memory_ablation.py`)."
    return answered("Does LRML's memory help?", clauses, missing)


def memory_section(memory: dict, verdicts: dict, slots: str) -> list[str]:
    lines = ["## Does LRML's memory help?", "",
             "`python bench/memory_ablation.py --dataset D --seeds 0 1 2`: LRML's default search with "
             f"`memory_size` searched over {slots} slots "
             "(memory; `memory/spaces/memory.json`), and the same search with one slot (one-slot: attention has "
             "nothing to choose, so every pair's relation is the same vector, a translation). Each search's best "
             "checkpoint on test "
             "(p: paired randomisation test per seed; pooled: on each user's nDCG@10 averaged over the seeds) "
             f"and its configuration retrained with seeds {', '.join(map(str, RETRAIN_SEEDS))} (mean ± sd).", ""]
    if not memory:
        return lines + ["Not measured yet.", ""]
    for dataset, seeds in memory.items():
        lines += [f"### {dataset}", "", "| seed | arm | slots chosen | search's valid | test sampled | retrains sampled "
                  "| test full | retrains full |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for seed, arms in sorted(seeds.items()):
            for arm in ARMS:
                if arm in arms:
                    row = arms[arm]
                    cells = [str(seed), arm, str(row["config"]["memory_size"]), f"{row['search_valid']:.4f}"]
                    for protocol in PROTOCOLS:
                        runs = row["runs"]["test"][protocol]["ndcg@10"]
                        cells += [f"{ndcg(row, protocol):.4f}", f"{runs['mean']:.4f} ± {runs['sd']:.4f}"]
                    lines.append("| " + " | ".join(cells) + " |")
        if dataset in verdicts:
            lines += ["", "| protocol | memory − one slot, per seed | mean | p per seed | p pooled |", "|---|---|---:|---|---:|"]
            for protocol in PROTOCOLS:
                found = verdicts[dataset][protocol]
                lines.append(f"| {protocol} | {', '.join(f'{gap:+.4f}' for gap in found['gaps'])} | {found['mean']:+.4f} | "
                             f"{', '.join(map(p_text, found['p']))} | {p_text(found['pooled'])} |")
        lines.append("")
    return lines


# ---- the selection metric

def load_metric(root: Path) -> list[dict]:
    """Each search's (and each dataset's EASE) choices under both protocols, ``bench/metric_choice.py``'s."""
    return [json.loads(path.read_text()) for path in sorted((root / "metric").glob("*.json"))]


def choice_ndcg(choice: dict, protocol: str) -> float:
    """A choice's test nDCG@10: its retrains' mean, or EASE's one fit."""
    if "runs" in choice:
        return choice["runs"]["test"][protocol]["ndcg@10"]["mean"]
    return choice["test"][protocol]["ndcg@10"]


def metric_gaps(records: list[dict], protocol: str) -> list[float]:
    """Per search, test nDCG@10 in ``protocol`` of the choice made on full-ranking validation less that made on
    sampled validation."""
    return [choice_ndcg(record["choices"]["full"], protocol) - choice_ndcg(record["choices"]["sampled"], protocol)
            for record in records]


def metric_effect(records: list[dict], protocol: str) -> tuple[float, float]:
    """The mean of ``metric_gaps`` over the searches, and its paired randomisation test against no difference."""
    gaps = np.array(metric_gaps(records, protocol))
    return float(np.mean(gaps)), paired_randomization_test(gaps, np.zeros(len(gaps)))


def is_live(record: dict) -> bool:
    """A search that selected on full-ranking validation itself: a check of the replays, not one of them."""
    return record.get("search_metric") == "full"


def both_protocols(choice: dict) -> str:
    """A choice's test nDCG@10 in words: ``0.5000 sampled and 0.0300 full``."""
    return " and ".join(f"{choice_ndcg(choice, protocol):.4f} {protocol}" for protocol in PROTOCOLS)


def live_checks(records: list[dict]) -> list[str]:
    """Each live search beside the replay of the same dataset, model and seed: its own full-ranking choice against
    the one replayed from the search that selected on sampled."""
    lines = []
    for live in filter(is_live, records):
        twins = [r for r in records if not is_live(r) and r.get("seed") == live["seed"]
                 and (r["dataset"], r["model"]) == (live["dataset"], live["model"])]
        for twin in twins:
            lines.append(f"- Live check on {live['dataset']}, {LABELS[live['model']]}, search seed {live['seed']}: "
                         f"`{live['search']}`'s own choice on full-ranking validation scored test nDCG@10 "
                         f"{both_protocols(live['choices']['full'])}, the choice replayed from `{twin['search']}` "
                         f"{both_protocols(twin['choices']['full'])}.")
    return lines + [""] if lines else []


def metric_section(records: list[dict]) -> list[str]:
    lines = ["## Which validation metric to select on", "",
             "`python bench/metric_choice.py <searches> --ease <datasets>`: from searches whose trials reported both "
             "protocols every epoch, each search's choice replayed on each protocol's validation nDCG@10 as "
             "`tune/best.py` makes it (top configurations retrained with seeds "
             f"{', '.join(map(str, RETRAIN_SEEDS))}, early-stopped on that protocol); each choice's test nDCG@10 is "
             "its retrains' mean (EASE: its weight's one fit). A search that ran with `--metric full` is marked "
             "live: its full choice is its own, and it checks the replays rather than counting among them. p: paired "
             "randomisation test over the replayed searches of the full choice against the sampled one.", ""]
    if not records:
        return lines + ["Not measured yet.", ""]
    lines += ["| dataset | model | search | on sampled: test sampled | test full | on full: test sampled | test full | "
              "same configuration |", "|---|---|---|---:|---:|---:|---:|---|"]
    for record in records:
        search = record.get("search", "EASE's weight grid") + (" (live)" if is_live(record) else "")
        cells = [record["dataset"], LABELS[record["model"]], search]
        cells += [f"{choice_ndcg(record['choices'][metric], protocol):.4f}" for metric in PROTOCOLS for protocol in PROTOCOLS]
        same = record["choices"]["sampled"].get("config", record["choices"]["sampled"].get("reg_weight")) == \
            record["choices"]["full"].get("config", record["choices"]["full"].get("reg_weight"))
        lines.append("| " + " | ".join(cells) + f" | {'yes' if same else 'no'} |")
    lines += ["", "| dataset | model | searches | full − sampled choice, test sampled | p | test full | p |",
              "|---|---|---:|---:|---:|---:|---:|"]
    replayed, groups = [r for r in records if not is_live(r)], []
    for dataset in dict.fromkeys(r["dataset"] for r in replayed):
        here = [r for r in replayed if r["dataset"] == dataset]
        groups += [(dataset, LABELS[model], [r for r in here if r["model"] == model])
                   for model in dict.fromkeys(r["model"] for r in here)] + [(dataset, "all", here)]
    for dataset, label, group in [*groups, ("all", "all", replayed)]:
        cells = [dataset, label, str(len(group))]
        for protocol in PROTOCOLS:
            mean, p = metric_effect(group, protocol)
            cells += [f"{mean:+.4f}", p_text(p)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", *live_checks(records)]


def metric_words(records: list[dict], datasets) -> list[str]:
    """Per dataset, which validation metric chose better on test: full ranking only where its choices scored higher
    in full ranking without scoring lower in the sampled protocol (the rule the default follows)."""
    clauses, missing = [], []
    for dataset in datasets:
        group = [record for record in records if record["dataset"] == dataset and not is_live(record)]
        if not group:
            missing.append(dataset)
            continue
        effect = {protocol: metric_effect(group, protocol) for protocol in PROTOCOLS}
        effects = [f"{effect[protocol][0]:+.4f} {protocol} (p {p_text(effect[protocol][1])})" for protocol in PROTOCOLS]
        better = effect["full"][0] > 0 and effect["sampled"][0] >= 0
        models = ", ".join(LABELS[model] for model in dict.fromkeys(record["model"] for record in group))
        clauses.append(f"on {dataset} ({len(group)} choices: {models}) choosing on full-ranking validation instead "
                       f"of sampled moves test nDCG@10 by {' and '.join(effects)}: "
                       + ("full ranking chooses better" if better else "sampled stays the better choice"))
    if not clauses:
        return []
    return ["- " + answered("Which validation metric to select on?", clauses, missing)]


# ---- what the search seeds say, in words

def against_defaults_words(results: dict) -> list[str]:
    """Tuning against not tuning: which means hold, and which cells a default run reaches."""
    lines = []
    for dataset, seeds in results.items():
        cells = [(model, seed, protocol) for model in TUNED for seed in sorted(seeds) for protocol in PROTOCOLS]
        below = [(model, seed, protocol) for model, seed, protocol in cells
                 if np.mean(tuned_runs(seeds[seed][model], protocol)) <= np.mean(default_runs(seeds[seed][model], protocol))]
        reached = [(model, seed, protocol, exact_permutation_p(tuned_runs(seeds[seed][model], protocol),
                                                                default_runs(seeds[seed][model], protocol)))
                   for model, seed, protocol in cells if model in TRAINED
                   and max(default_runs(seeds[seed][model], protocol)) >= min(tuned_runs(seeds[seed][model], protocol))]
        held = "in every cell" if not below else f"in {len(cells) - len(below)} of {len(cells)} cells"
        text = (f"- **{dataset}: the tuned mean is above the defaults' {held}** (model × search seed × protocol; "
                f"test nDCG@10, the chosen configuration's retrains against the defaults' runs, seeds "
                f"{', '.join(map(str, RETRAIN_SEEDS))}).")
        if reached:
            ps = [p for *_, p in reached]
            text += (f" In {len(reached)} of {sum(model in TRAINED for model, *_ in cells)} trained cells a default "
                     f"run scores at or above a tuned run, and there the difference is within noise (exact "
                     f"3-against-3 permutation p {min(ps):.2f} to {max(ps):.2f}): "
                     + ", ".join(f"{LABELS[model]} seed {seed} {protocol}" for model, seed, protocol, _ in reached) + ".")
        text += " The search seeds share one set of default runs, so they are not independent confirmations."
        lines.append(text)
    return lines


def winners_words(root: Path, results: dict, searcher: str) -> list[str]:
    lines = []
    for dataset, seeds in results.items():
        frames = per_user_frames(root, dataset, searcher, sorted(seeds))
        parts = []
        for protocol in PROTOCOLS:
            means = {model: np.mean([ndcg(seeds[seed][model], protocol) for seed in seeds]) for model in seeds[min(seeds)]}
            first, second = sorted(means, key=means.get, reverse=True)[:2]
            per_seed = [seeds[seed][first]["p_values"][second][protocol] for seed in sorted(seeds)]
            pooled = f"; {p_text(pooled_p(frames, first, second, protocol))} pooled" if frames else ""
            parts.append(f"{protocol}, {LABELS[first]} by {means[first] - means[second]:+.4f} over "
                         f"{LABELS[second]} (p {', '.join(map(p_text, per_seed))} per seed{pooled})")
        against_pop = [seeds[seed][model]["p_values"]["pop"][protocol] for seed in seeds for model in TUNED
                       for protocol in PROTOCOLS]
        significant = [f"{LABELS[ahead]} over {LABELS[behind]}, seed {seed} {protocol} (p {p_text(p)})"
                       for seed in sorted(seeds) for protocol in PROTOCOLS
                       for ahead, behind in itertools.permutations(TUNED, 2)
                       if ndcg(seeds[seed][ahead], protocol) > ndcg(seeds[seed][behind], protocol)
                       and (p := seeds[seed][ahead]["p_values"][behind][protocol]) < 0.05]
        headline = ("no tuned model is significantly ahead of another on any seed" if not significant else
                    "tuned models differ significantly only in " + "; ".join(significant))
        text = (f"- **{dataset}: {headline}.** Best mean over the seeds' checkpoints: "
                f"{'; '.join(parts)}. Every tuned model beats popularity on every seed (p ≤ {p_text(max(against_pop))}).")
        if frames is None:
            missing = [seed for seed in sorted(seeds)
                       if not (folder(root, dataset, searcher, seed) / "per_user.parquet").exists()]
            text += (f" Seed {', '.join(map(str, missing))} has no `per_user.parquet` (written by an older "
                     "`best.py`), so there is no pooled test here.")
        lines.append(text)
    return lines


def drop_words(results: dict) -> list[str]:
    """How far nDCG@10 falls from validation to test for the chosen configurations and for the defaults."""
    lines = []
    for dataset, seeds in results.items():
        def spread(key: str) -> list[float]:
            rows = [seeds[seed][model] for seed in seeds for model in TRAINED]
            source = [row["candidates"][0]["runs"] if key == "chosen" else row["defaults"] for row in rows]
            return [runs["valid"]["sampled"]["ndcg@10"]["mean"] - runs["test"]["sampled"]["ndcg@10"]["mean"]
                    for runs in source]
        chosen, defaults = spread("chosen"), spread("defaults")
        verdict = ("no more than the defaults' on average, which no validation score chose: the split's" if
                   np.mean(chosen) <= np.mean(defaults) else
                   "more than the defaults' on average, which no validation score chose: part of it is the choice's")
        lines.append(f"- **{dataset}: from validation to test** the chosen configurations' retrains lose "
                     f"{min(chosen):.3f} to {max(chosen):.3f} sampled nDCG@10 (mean {np.mean(chosen):.3f}), the models' "
                     f"defaults {min(defaults):.3f} to {max(defaults):.3f} (mean {np.mean(defaults):.3f}): {verdict}.")
    return lines


def memory_slots_words(results: dict) -> list[str]:
    found = [f"{dataset} seed {seed}: {seeds[seed]['lrml']['config']['memory_size']}"
             for dataset, seeds in results.items() for seed in sorted(seeds)]
    return ["- **The memory slots LRML's searches chose**: " + "; ".join(found) + ". With one slot every "
            "user-item pair gets the same relation vector: a translation model, not memory-based attention."]


AT_AN_END = re.compile(r" is the (\w+) the space allows .*")


def narrow_words(results: dict) -> list[str]:
    """The chosen values at an end of their range, from each summary's warnings."""
    notes = [f"{LABELS[model]} {dataset} seed {seed} " + AT_AN_END.sub(r" (\1)", note)
             for dataset, seeds in results.items() for seed in sorted(seeds) for model, row in seeds[seed].items()
             for note in row["notes"]]
    return ["- **Where the spaces may still be too narrow**, chosen values at an end of their range: "
            + "; ".join(notes) + "."] if notes else []


# ---- the tables over search seeds

def against_defaults(results: dict) -> list[str]:
    """Each search seed's chosen configuration against the model's defaults trained to convergence."""
    lines = ["### Tuned against not tuning", "",
             "Test nDCG@10. Tuned: each search seed's chosen configuration, the mean of its retrains (seeds "
             f"{', '.join(map(str, RETRAIN_SEEDS))}), per search seed. Defaults: the model's `lrml.train.DEFAULTS` "
             "trained to convergence with the same seeds, mean ± sd. p: exact permutation test of the three tuned "
             "runs against the three default runs, per search seed. EASE: one fit each, deterministic.", "",
             "| dataset | model | protocol | tuned, per search seed | defaults | lowest tuned − defaults | p per seed |",
             "|---|---|---|---|---:|---:|---|"]
    for dataset, seeds in results.items():
        for model in TUNED:
            for protocol in PROTOCOLS:
                rows = [seeds[seed][model] for seed in sorted(seeds)]
                tuned = [float(np.mean(tuned_runs(row, protocol))) for row in rows]
                base = rows[0]["defaults"]["test"][protocol]["ndcg@10"]
                spread = f" ± {base['sd']:.4f}" if "sd" in base else ""
                ps = ", ".join(p_text(exact_permutation_p(tuned_runs(row, protocol), default_runs(row, protocol)))
                               for row in rows) if model in TRAINED else ""
                lines.append(f"| {dataset} | {LABELS[model]} | {protocol} | {', '.join(f'{v:.4f}' for v in tuned)} | "
                             f"{base['mean']:.4f}{spread} | {min(tuned) - base['mean']:+.4f} | {ps} |")
    return lines + [""]


def winners(root: Path, results: dict, searcher: str) -> list[str]:
    """Which model wins each protocol on each dataset, by how much over the runner-up, and the p-values."""
    lines = ["### Who wins", "",
             "Per dataset and protocol: the model with the best mean test nDCG@10 over the search seeds (each seed's "
             "chosen checkpoint), its margin over the runner-up, and the paired test of the two: seed by seed, and "
             "on each test user's nDCG@10 averaged over the seeds (pooled).", "",
             "| dataset | protocol | best | mean | runner-up | mean | margin | p per seed | p pooled |",
             "|---|---|---|---:|---|---:|---:|---|---:|"]
    for dataset, seeds in results.items():
        frames = per_user_frames(root, dataset, searcher, sorted(seeds))
        for protocol in PROTOCOLS:
            means = {model: np.mean([ndcg(seeds[seed][model], protocol) for seed in seeds]) for model in seeds[min(seeds)]}
            first, second = sorted(means, key=means.get, reverse=True)[:2]
            p = [seeds[seed][first]["p_values"][second][protocol] for seed in sorted(seeds)]
            pooled = p_text(pooled_p(frames, first, second, protocol)) if frames else ""
            lines.append(f"| {dataset} | {protocol} | {LABELS[first]} | {means[first]:.4f} | {LABELS[second]} | "
                         f"{means[second]:.4f} | {means[first] - means[second]:+.4f} | {', '.join(map(p_text, p))} "
                         f"| {pooled} |")
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
                              "" if p is None else p_text(p)]
                lines.append("| " + " | ".join(cells) + " |")
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
            for model in TRAINED:
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
    if not rows:
        return []
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


# ---- the ablation of the search's parts

def ablation_section(root: Path, results: dict, searcher: str) -> list[str]:
    """bench/ablation.py's arms against the full search, beside a yardstick: how much a single search's top
    configuration moves between search seeds."""
    path = root / "ablation" / "ablation.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    full = {row["model"]: row for row in rows if row["arm"] == "full"}
    dataset, seed = re.fullmatch(rf"(.+)-lrml-{searcher}-s(\d+)", full["lrml"]["search"]).groups()
    seeds = results[dataset]

    def yardstick(model: str, protocol: str) -> float:
        """sqrt(2) x the sd over search seeds of the search's single best trial's retrained test nDCG@10."""
        best = [max(seeds[s][model]["candidates"], key=lambda c: c["search_valid"])["runs"]["test"][protocol]["ndcg@10"]["mean"]
                for s in sorted(seeds)]
        return float(np.sqrt(2) * np.std(best, ddof=1))

    models = list(full)
    lines = ["## Ablation: what each part of the search moves", "",
             f"`python bench/ablation.py --full {full['lrml']['search']} --dataset {dataset} --seed {seed}` reruns each "
             "model's default search with one part taken back: the budget (20 epochs, patience 5), the space (the "
             "earlier, narrower ranges and Adam alone), negatives and loss (one negative per positive and the model's "
             "own loss), and the item bias (LRML and CML). Each arm's top configuration by validation is retrained "
             f"with seeds {', '.join(map(str, RETRAIN_SEEDS))} and set against the full search's top configuration. "
             "Every number and space file: [ablation/ablation.md](ablation/ablation.md), `ablation/ablation.json`.", "",
             "One search seed per arm, so the yardstick is how much a single search's top configuration moves between "
             f"search seeds: √2 × the sd over seeds {', '.join(map(str, sorted(seeds)))} of the single best trial's "
             "retrained test nDCG@10 (the selection table below): "
             + ", ".join(f"{LABELS[m]} {yardstick(m, 'sampled'):.4f} / {yardstick(m, 'full'):.4f}" for m in models)
             + " (sampled / full). Test nDCG@10, arm minus full search, sampled / full; bold: beyond twice the "
             "yardstick.", "", "| taken back | " + " | ".join(LABELS[m] for m in models) + " |",
             "|---|" + "---:|" * len(models)]
    bold = []
    for arm in dict.fromkeys(row["arm"] for row in rows if row["arm"] != "full"):
        cells = []
        for model in models:
            row = next((r for r in rows if r["model"] == model and r["arm"] == arm), None)
            if row is None:
                cells.append("(always has one)" if model == "bpr" and arm == "item bias" else "")
                continue
            shown = []
            for protocol in PROTOCOLS:
                gap = ndcg(row["runs"], protocol) - ndcg(full[model]["runs"], protocol)
                beyond = abs(gap) > 2 * yardstick(model, protocol)
                shown.append(f"**{gap:+.4f}**" if beyond else f"{gap:+.4f}")
                if beyond:
                    bold.append(f"{arm} for {LABELS[model]} {protocol} ({gap:+.4f})")
            cells.append(" / ".join(shown))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines + ["", "Beyond twice the yardstick: " + ("; ".join(bold) if bold else "nothing") + ".", ""]


# ---- the pages

def rungs_words(root: Path, results: dict, searcher: str) -> str:
    """How each dataset's searches stopped trials, as their ``summary.md`` says; a summary that names no measure
    was written while the rungs counted epochs."""
    said = {}
    for dataset, seeds in results.items():
        for seed in seeds:
            words = SCHEDULER_WORDS.search((folder(root, dataset, searcher, seed) / "summary.md").read_text())[1]
            said.setdefault(dataset, set()).add(words if "rungs by" in words else f"rungs by epochs, {words}")
    return "; ".join(f"{dataset}: {' / '.join(sorted(words))}" for dataset, words in said.items())


def setup_lines(root: Path, results: dict, searcher: str) -> list[str]:
    s = SearchSettings()
    return ["# Results", "",
            "Built by `python results/tables.py` from the files in this folder; `--check` (run by the tests) fails "
            "when this text is not what they give. Folders:", "",
            "- `<dataset>-lrml-tpe-s<seed>/`: what `tune/best.py` wrote for the LRML search of that dataset and "
            "search seed, beside the CML and BPR-MF searches of the same budget and seed, EASE tuned on validation "
            "and popularity: `summary.md` (with each search's time), `evaluation.json` (per-model metrics, "
            "intervals, p-values, the candidates' retrains and the defaults' runs), `per_user.parquet` (each test "
            "user's metrics, which the pooled tests average over search seeds), `trials.csv`, plots.",
            "- `memory/`: the memory ablation's arms (`bench/memory_ablation.py`); `ablation/`: the ablation of the "
            "search's parts (`bench/ablation.py`).",
            "- `ray/` (not committed): the raw Tune experiments these summaries were read from.", "",
            "**The searches.** `python tune/search.py --model M --name <dataset>-M-tpe-s<seed> --seed <seed>` for M in "
            f"lrml, cml and bpr, each with the defaults of its day: {s.num_samples} trials, {s.searcher.upper()} with "
            f"{s.scheduler.upper()} ({rungs_words(root, results, searcher)}), up to {s.max_epochs} epochs with patience "
            f"{s.patience}, the spaces in `lrml_tune/sweep/default_spaces/`, selecting on validation nDCG@10 "
            f"({s.metric}); then `python tune/best.py <dataset>-lrml-tpe-s<seed> --tune-baselines` (the ml-100k "
            "searches with `--dataset ml-100k`, its archive checked against GroupLens's checksum, and "
            "`--report-both`, so that the selection metric can be replayed from them).", "",
            "**Protocol.** Leave-one-out by time: each user's latest interaction is the test item, the one before it "
            f"the validation item, the rest training. *Sampled*: the held-out item ranked against "
            f"{SplitParams.num_candidates} unseen items drawn once per user with a fixed seed; *full*: ranked "
            "against every item, the user's training items excluded (and the validation item, on test). Ties count "
            "against the held-out item; a non-finite score counts as the worst. Only the chosen checkpoint of each "
            "search is evaluated on test.", "",
            f"**Statistics.** 95% intervals: percentile bootstrap over test users ({RESAMPLES:,} resamples). "
            f"p-values: two-sided paired randomisation test on per-user test nDCG@10 ({RESAMPLES:,} sign flips). "
            f"Each chosen configuration and each model's defaults are trained with seeds "
            f"{', '.join(map(str, RETRAIN_SEEDS))}; their spread is the training noise.", ""]


def dataset_notes(results: dict) -> list[str]:
    """Per dataset: how many candidates best.py chose among, per seed."""
    lines = []
    for dataset, seeds in results.items():
        counts = {seed: len(seeds[seed]["lrml"]["candidates"]) for seed in sorted(seeds)}
        lines.append(f"- {dataset}, search seeds {', '.join(map(str, counts))}: each search's top "
                     + ", ".join(f"{count} (seed {seed})" for seed, count in counts.items())
                     + " configuration(s) retrained to choose from (`best.py --candidates`).")
    return lines


def wrapped(lines: list[str]) -> list[str]:
    """Prose lines folded at 110 columns (a bullet's continuation indented); tables, headings and blank lines kept."""
    return [line if not line or line[0] in "|#<" else
            textwrap.fill(line, 110, subsequent_indent="  " if line.startswith("- ") else "", break_on_hyphens=False,
                          break_long_words=False)
            for line in lines]


def results_page(root: Path, results: dict, memory: dict, verdicts: dict, searcher: str) -> str:
    slots, metric_choices = memory_slots(root), load_metric(root)
    lines = [*setup_lines(root, results, searcher), "## What the files say", "", "- " + memory_sentence(verdicts, results, slots),
             *metric_words(metric_choices, results), *against_defaults_words(results),
             *winners_words(root, results, searcher), *drop_words(results),
             *memory_slots_words(results), *narrow_words(results), "", "Which runs these are:", "",
             *dataset_notes(results), "", *memory_section(memory, verdicts, slots), *metric_section(metric_choices),
             *ablation_section(root, results, searcher),
             "## Tables over search seeds", "", *against_defaults(results), *winners(root, results, searcher),
             *comparison(results), *selection(results)]
    return "\n".join(wrapped(lines)).rstrip("\n") + "\n"


def readme_block(results: dict, verdicts: dict, slots: str) -> list[str]:
    """The README's results: the memory answer first, then each dataset's search seed 0 on test."""
    lines = [START, memory_sentence(verdicts, results, slots), "",
             "Leave-one-out by time; each search's chosen checkpoint on test, nDCG@10 with 95% bootstrap intervals "
             "over test users, p from paired randomisation tests against LRML; search seed 0 of each dataset.", "",
             "| dataset | protocol | LRML | CML | BPR-MF | EASE | popularity |", "|---|---|---:|---:|---:|---:|---:|"]
    for dataset, seeds in results.items():
        rows = seeds[0]
        for protocol in PROTOCOLS:
            best = max(rows, key=lambda model: ndcg(rows[model], protocol))
            cells = []
            for model in rows:
                value = rows[model]["test"][protocol]["ndcg@10"]
                shown = f"**{value['mean']:.4f}**" if model == best else f"{value['mean']:.4f}"
                cells.append(f"{shown} [{value['ci95'][0]:.4f}, {value['ci95'][1]:.4f}]" if model == "lrml" else
                             f"{shown} (p {p_text(rows[model]['p_values']['lrml'][protocol])})")
            lines.append(f"| {dataset} | {'100 sampled' if protocol == 'sampled' else 'full ranking'} | "
                         + " | ".join(cells) + " |")
    versus = [rows[0][model]["p_values"]["lrml"][protocol] for rows in results.values() for model in TUNED
              if model != "lrml" for protocol in PROTOCOLS]
    popularity = [rows[0]["pop"]["p_values"][model][protocol] for rows in results.values() for model in TUNED
                  for protocol in PROTOCOLS]
    verdict = (f"No tuned model differs significantly from LRML on search seed 0 (p ≥ {p_text(min(versus))})"
               if min(versus) >= 0.05 else f"On search seed 0 the smallest p against LRML is {p_text(min(versus))}")
    lines += ["", f"{verdict}, and every tuned model beats popularity (p ≤ {p_text(max(popularity))})."]
    seeds = sorted({seed for found in results.values() for seed in found})
    lines += ["", f"Over search seeds {', '.join(map(str, seeds))}: tuning against the defaults trained to "
              "convergence, pooled tests, the memory ablation and the ablation of the search's parts: "
              "[results/README.md](results/README.md).", END]
    return lines


def build(root: Path, searcher: str) -> dict[Path, str]:
    """Each page's text as the files give it now."""
    results, memory = load(root, searcher), load_memory(root)
    if not results:
        raise SystemExit(f"no {root}/*-lrml-{searcher}-s*/evaluation.json: run tune/best.py first")
    verdicts, readme = memory_verdicts(memory), root.parent / "README.md"
    return {root / "README.md": results_page(root, results, memory, verdicts, searcher),
            readme: replace_section(readme.read_text(), START, END,
                                    wrapped(readme_block(results, verdicts, memory_slots(root))))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searcher", default="tpe", help="the searcher in the experiments' names")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is not a fresh build")
    parser.add_argument("--root", type=Path, default=RESULTS, help=argparse.SUPPRESS)  # the tests' copy
    args = parser.parse_args(argv)
    pages = build(args.root, args.searcher)
    stale = [path for path, text in pages.items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path}: differs from what results/tables.py builds from the files; run python results/tables.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(pages[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
