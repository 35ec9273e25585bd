"""What each part of the search buys: every model's default search with one part taken back at a time.

The parts: the **budget** (back to 20 epochs, patience 5), the **space** (back to the earlier, narrower
ranges, Adam alone), **negatives and loss** (one negative per positive and the model's own loss) and,
for LRML and CML, the **item bias**. Each arm is ``tune/search.py`` as a user runs it, with the same
seed, searcher and trials as the full search; its best configuration is retrained with the seeds
``best.py`` uses (runs ``best.py`` already made are read back) and evaluated on test in both protocols, as is
the full search's.

    python bench/ablation.py --full ml-latest-small-lrml-tpe-s0       # writes results/ablation.md and .json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lrml.data import prepare
from lrml_tune.compare import BASELINES, LABELS, RETRAIN_SEEDS, baseline_name, candidates
from lrml_tune.experiment import Experiment
from lrml_tune.retrain import kept_runs
from lrml_tune.settings import SearchRecord
from lrml_tune.space import default_space_file

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
OLD_BUDGET = ["--max-epochs", "20", "--patience", "5"]


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


def arm_search(full: SearchRecord, model: str, arm: str) -> str:
    """The arm's finished search (run now if missing) beside the full one; ``full`` itself for the full arm."""
    name = baseline_name(full.settings.name, model)
    if arm == "full":
        return str(STORAGE / name)
    name = f"ablation-{arm.replace(' ', '-')}-{name}"
    location = STORAGE / name
    if SearchRecord.exists(str(location)) and SearchRecord.read(str(location)).outcome:
        return str(location)
    space_file = OUT / f"{name}.json"
    space_file.write_text(json.dumps(arm_space(model, arm), indent=2) + "\n")
    s = full.settings
    command = [sys.executable, str(REPO / "tune" / "search.py"), "--model", model, "--name", name,
               "--storage-path", str(STORAGE), "--dataset", s.dataset, "--num-samples", str(s.num_samples),
               "--seed", str(s.seed), "--searcher", s.searcher, "--scheduler", s.scheduler, "--space", str(space_file)]
    command += OLD_BUDGET if arm == "budget" else ["--max-epochs", str(s.max_epochs), "--patience", str(s.patience)]
    command += ["--data-dir", s.data_dir] if s.data_dir else []
    print(f"{name} ...", flush=True)
    with open(OUT / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return str(location)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", required=True, help="the full LRML search, a name under results/ray/")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    full = SearchRecord.read(str(STORAGE / args.full))
    dataset_path = str(prepare(full.settings.dataset, full.settings.data_dir, progress=False))
    rows = []
    for model in ("lrml", *BASELINES):
        for arm in ARMS:
            if arm == "item bias" and model == "bpr":
                continue  # BPR-MF always has its item bias
            experiment = Experiment(arm_search(full, model, arm))
            (top,) = candidates(experiment, 1, dataset_path, kept_runs())
            rows.append({"model": model, "arm": arm, "search": experiment.name, "trial": top.trial,
                         "config": top.config, "search_valid": top.search_valid,
                         "search_seconds": experiment.record.outcome.search_seconds, "runs": top.runs})
            (OUT / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, args.full)
    return 0


def write_table(rows: list[dict], full: str) -> None:
    """results/ablation.md: each arm's test nDCG@10 (retrains' mean ± sd) and its difference from the full search."""
    def cell(row: dict, protocol: str) -> str:
        value = row["runs"]["test"][protocol]["ndcg@10"]
        return f"{value['mean']:.4f} ± {value['sd']:.4f}"

    lines = ["# Ablation: what each part of the search buys", "",
             f"`python bench/ablation.py --full {full}` on this project's 2-core CPU machine. Each row: the model's "
             "search with one part taken back (the same dataset, trials, seed, searcher and scheduler), its best "
             f"configuration retrained with seeds {', '.join(map(str, RETRAIN_SEEDS))}; test nDCG@10 mean ± sd, and "
             "the difference from the full search's.", "",
             "| model | taken back | search's valid | search seconds | test sampled | difference | test full | difference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        whole = next(other for other in rows if other["model"] == row["model"] and other["arm"] == "full")
        cells = [LABELS[row["model"]], "nothing (full)" if row["arm"] == "full" else row["arm"],
                 f"{row['search_valid']:.4f}", f"{row['search_seconds']:.0f}"]
        for protocol in ("sampled", "full"):
            difference = row["runs"]["test"][protocol]["ndcg@10"]["mean"] - whole["runs"]["test"][protocol]["ndcg@10"]["mean"]
            cells += [cell(row, protocol), "" if row is whole else f"{difference:+.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (OUT / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
