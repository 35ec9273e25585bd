"""What each part of the search buys: every model's default search with one part taken back at a time.

The parts: the **budget** (back to 20 epochs, patience 5), the **space** (back to the earlier, narrower
ranges, Adam alone), **negatives and loss** (one negative per positive and the model's own loss) and,
for LRML and CML, the **item bias**. Each arm is the search's default ``SearchSettings`` (64 trials, TPE, ASHA,
100 epochs, patience 10) with the full search's dataset and seed and the arm's change, run as
``tune/search.py`` runs it, on a local Ray of its own. The full
search is read from what ``best.py`` wrote for it (``results/<full>/``); every search is represented by its
top configuration by validation, retrained with the seeds ``best.py`` uses and evaluated on test in both
protocols.

    python bench/ablation.py --full ml-100k-lrml-tpe-s0 --dataset ml-100k --data-dir path/to/ml-100k --seed 0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from lrml.data import prepare
from lrml_tune import sweep
from lrml_tune.comparison import LABELS, RETRAIN_SEEDS, candidates, kept_runs
from lrml_tune.comparison.baseline_searches import BASELINES, baseline_name
from lrml_tune.sweep import Experiment, SearchRecord, SearchSettings
from lrml_tune.sweep.space import default_space_file

REPO = Path(__file__).resolve().parents[1]
STORAGE = REPO / "results" / "ray"
OUT = REPO / "results" / "ablation"
# The ranges every space had before the widening, and Adam alone.
NARROW = {"embedding_dim": {"type": "choice", "values": [32, 64, 100, 128]},
          "margin": {"type": "loguniform", "low": 0.05, "high": 1.0},
          "reg_weight": {"type": "loguniform", "low": 0.0001, "high": 0.1},
          "optimizer": {"type": "choice", "values": ["adam"]},
          "lr": {"type": "loguniform", "by": "optimizer", "ranges": {"adam": [0.0003, 0.01]}},
          "batch_size": {"type": "choice", "values": [256, 512, 1024, 2048]}}
NARROW_BPR = {**NARROW, "reg_weight": {"type": "loguniform", "low": 0.00001, "high": 0.1}}
ARMS = ("full", "budget", "space", "negatives and loss", "item bias")
OLD_BUDGET = {"max_epochs": 20, "patience": 5}


def arm_space(model: str, arm: str) -> dict:
    """The model's default space with the arm's part taken back."""
    space = json.loads(default_space_file(model).read_text())
    if arm == "space":
        for name, entry in (NARROW_BPR if model == "bpr" else NARROW).items():
            if name in space:
                space[name] = {**entry, **({"when": space[name]["when"]} if "when" in space[name] else {})}
    elif arm == "negatives and loss":
        for name in ("num_negatives", "loss", "temperature"):
            space.pop(name, None)
        space.get("margin", {}).pop("when", None)
    elif arm == "item bias":
        space.pop("item_bias")
    return space


def arm_search(args: argparse.Namespace, model: str, arm: str) -> Experiment:
    """The arm's finished search under results/ray/, run now if missing."""
    name = f"ablation-{arm.replace(' ', '-')}-{baseline_name(args.full, model)}"
    location = STORAGE / name
    if not (SearchRecord.exists(str(location)) and SearchRecord.read(str(location)).outcome):
        space_file = OUT / f"{name}.json"
        space_file.write_text(json.dumps(arm_space(model, arm), indent=2) + "\n")
        settings = SearchSettings(model=model, name=name, storage_path=str(STORAGE), dataset=args.dataset,
                                  data_dir=args.data_dir, seed=args.seed, space_file=str(space_file),
                                  **(OLD_BUDGET if arm == "budget" else {}))
        print(settings.command_line(), flush=True)
        if sweep.run(settings) != 0:
            raise SystemExit(f"the search {name} did not finish")
    return Experiment(str(location))


def arm_row(args: argparse.Namespace, model: str, arm: str, dataset_path: str) -> dict:
    """One arm's search, its top configuration and that configuration's retrains."""
    experiment = arm_search(args, model, arm)
    (top,) = candidates(experiment, 1, dataset_path, kept_runs())
    return {"model": model, "arm": arm, "search": experiment.name, "trial": top.trial, "config": top.config,
            "search_valid": top.search_valid, "epochs": sum(trial.epochs for trial in experiment.trials),
            "runs": top.runs}


def full_rows(full: str) -> dict[str, dict]:
    """Each model's row of the full search: its top configuration by validation and that configuration's
    retrains, as best.py wrote them under results/<full>/. Raises ``ValueError`` naming what is missing."""
    folder = REPO / "results" / full
    for name in ("evaluation.json", "trials.csv"):
        if not (folder / name).is_file():
            raise ValueError(f"results/{full}/{name} not found: run tune/best.py {full} --tune-baselines "
                             f"--out results/{full} first")
    entries = {row["model"]: row for row in json.loads((folder / "evaluation.json").read_text())}
    trials = pd.read_csv(folder / "trials.csv")
    rows = {}
    for model in ("lrml", *BASELINES):
        retrained = [candidate for candidate in entries.get(model, {}).get("candidates", []) if candidate.get("runs")]
        if not retrained:
            raise ValueError(f"results/{full}/evaluation.json has no retrained {LABELS[model]} configuration: "
                             "run tune/best.py with --tune-baselines and without --no-retrain")
        top = max(retrained, key=lambda candidate: candidate["search_valid"])
        rows[model] = {"model": model, "arm": "full", "search": entries[model]["tuned_by"], "trial": top["trial"],
                       "config": top["config"], "search_valid": top["search_valid"],
                       "epochs": int(trials.loc[trials["model"] == model, "epochs"].sum()), "runs": top["runs"]}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", required=True, help="the full LRML search: a folder under results/ best.py wrote")
    parser.add_argument("--dataset", required=True, help="the full search's dataset")
    parser.add_argument("--data-dir", help="the full search's --data-dir, if it had one")
    parser.add_argument("--seed", type=int, required=True, help="the full search's seed")
    args = parser.parse_args()
    try:
        full = full_rows(args.full)
    except ValueError as error:
        parser.error(str(error))
    OUT.mkdir(parents=True, exist_ok=True)
    dataset_path = str(prepare(args.dataset, args.data_dir, progress=False))
    rows = []
    for model in ("lrml", *BASELINES):
        for arm in ARMS:
            if arm == "item bias" and model == "bpr":
                continue  # BPR-MF always has its item bias
            rows.append(full[model] if arm == "full" else arm_row(args, model, arm, dataset_path))
            (OUT / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows)
    return 0


def write_table(rows: list[dict]) -> None:
    """results/ablation/ablation.md: each arm's test nDCG@10 (retrains' mean ± sd), its difference from the full
    search's, and the epochs its trials trained in all."""
    def cell(row: dict, protocol: str) -> str:
        value = row["runs"]["test"][protocol]["ndcg@10"]
        return f"{value['mean']:.4f} ± {value['sd']:.4f}"

    command = " ".join(["python bench/ablation.py", *sys.argv[1:]])
    lines = ["# Ablation: what each part of the search buys", "",
             f"`{command}` on the project's machine (`docs/speed.md`). Each row: the model's search with one part taken "
             "back (the same dataset, 64 trials, seed, TPE searcher and ASHA scheduler), its top configuration by "
             f"validation retrained with seeds {', '.join(map(str, RETRAIN_SEEDS))}; test nDCG@10 mean ± sd, and "
             "the difference from the full search's. Epochs: all the search's trials together, its cost.", "",
             "| model | taken back | search's valid | epochs | test sampled | difference | test full | difference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        whole = next(other for other in rows if other["model"] == row["model"] and other["arm"] == "full")
        cells = [LABELS[row["model"]], "nothing (full)" if row["arm"] == "full" else row["arm"],
                 f"{row['search_valid']:.4f}", str(row["epochs"])]
        for protocol in ("sampled", "full"):
            difference = row["runs"]["test"][protocol]["ndcg@10"]["mean"] - whole["runs"]["test"][protocol]["ndcg@10"]["mean"]
            cells += [cell(row, protocol), "" if row is whole else f"{difference:+.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (OUT / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
