"""Does LRML's memory earn its place? LRML's default search with its memory forced on (5 to 100 slots) against
the same search with one slot, on each dataset and search seed.

With one slot, attention has nothing to choose among: every user-item pair gets the same relation vector, a
translation model rather than LRML's memory-based attention. Each arm is ``tune/search.py``'s default LRML
search (64 trials, TPE, ASHA, the same seed) with only ``memory_size``'s values changed. Each search's best
trial by validation is evaluated as ``tune/best.py`` evaluates it: its checkpoint on test in both protocols
(per user, for paired tests), and its configuration retrained with the seeds ``best.py`` uses. An arm's
folder under ``results/memory/`` is kept once written, so a stopped run goes on where it stopped;
``python results/tables.py`` builds the table and the README's answer from those folders.

    python bench/memory_ablation.py --dataset ml-100k --data-dir path/to/ml-100k --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from lrml.data import load_dataset, prepare
from lrml.evaluate import Evaluator
from lrml_tune import sweep
from lrml_tune.comparison import candidates, kept_runs
from lrml_tune.comparison.model_result import evaluate, per_user_table
from lrml_tune.comparison.selection import load_trial
from lrml_tune.sweep import Experiment, SearchRecord, SearchSettings
from lrml_tune.sweep.space import default_space_file

REPO = Path(__file__).resolve().parents[1]
STORAGE = REPO / "results" / "ray"
OUT = REPO / "results" / "memory"
ARMS = {"memory": [5, 10, 20, 50, 100], "one-slot": [1]}  # memory_size's values in each arm's space


def arm_space(arm: str) -> dict:
    """LRML's default space with ``memory_size`` limited to the arm's values."""
    space = json.loads(default_space_file("lrml").read_text())
    space["memory_size"] = {"type": "choice", "values": ARMS[arm]}
    return space


def arm_name(arm: str, dataset: str, seed: int) -> str:
    return f"memory-{arm}-{dataset}-s{seed}"


def search(arm: str, dataset: str, data_dir: str | None, seed: int) -> Experiment:
    """The arm's finished search under results/ray/, run now if missing."""
    name = arm_name(arm, dataset, seed)
    location = STORAGE / name
    if not (SearchRecord.exists(str(location)) and SearchRecord.read(str(location)).outcome):
        space_file = OUT / "spaces" / f"{arm}.json"
        space_file.parent.mkdir(parents=True, exist_ok=True)
        space_file.write_text(json.dumps(arm_space(arm), indent=2) + "\n")
        settings = SearchSettings(model="lrml", name=name, storage_path=str(STORAGE), dataset=dataset,
                                  data_dir=data_dir, seed=seed, space_file=str(space_file))
        print(settings.command_line(), flush=True)
        if sweep.run(settings) != 0:
            raise SystemExit(f"the search {name} did not finish")
    return Experiment(str(location))


def evaluate_arm(arm: str, dataset: str, data_dir: str | None, seed: int) -> None:
    """results/memory/<arm name>/: the search's best trial evaluated on test (result.json, per_user.parquet)."""
    folder = OUT / arm_name(arm, dataset, seed)
    if (folder / "result.json").exists():
        return
    experiment = search(arm, dataset, data_dir, seed)
    data = load_dataset(prepare(dataset, data_dir, progress=False))
    (top,) = candidates(experiment, 1, str(data.path), kept_runs())
    with tempfile.TemporaryDirectory(prefix="lrml-memory-") as scratch:
        model = load_trial(experiment, top.trial, data.fingerprint, Path(scratch))
        result = evaluate(model, Evaluator(data), "lrml", experiment.name, top.trial, top.config)
    folder.mkdir(parents=True, exist_ok=True)
    per_user_table([result], data.user_raw_ids[data.test_users]).to_parquet(folder / "per_user.parquet", index=False)
    record = {"arm": arm, "dataset": dataset, "seed": seed, "search": experiment.name, "trial": top.trial,
              "config": top.config, "search_valid": top.search_valid, "test": result.test, "runs": top.runs,
              "epochs": sum(trial.epochs for trial in experiment.trials)}
    (folder / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {folder}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir", help="the dataset's archive or folder (ml-100k: GroupLens's folder or zip)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds")
    args = parser.parse_args()
    for seed in args.seeds:
        for arm in ARMS:
            evaluate_arm(arm, args.dataset, args.data_dir, seed)
    print("now: python results/tables.py (the tables and the README's answer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
