"""tune/search.py and tune/best.py as users run them, each starting its own local Ray."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import ML_100K, REPO, require
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from tensorboardX.proto import event_pb2

from lrml.train import monitor_key
from lrml_tune.comparison.selection import train_config
from lrml_tune.sweep import Experiment
from lrml_tune.sweep.watch import mlflow_name

pytestmark = pytest.mark.ray  # starts Ray: left out by `pytest -m "not ray"`

TUNE = REPO / "tune"
FULL = monitor_key("full")  # what the end-to-end search selects on
SAMPLED = monitor_key("sampled")


def run_script(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, str(TUNE / script), *args], capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


def test_search_then_best_against_tuned_baselines(tmp_path):
    """On ml-100k, whose 1,682 items make EASE's solves fast; selecting on full-ranking validation, which every
    step from the trials to EASE's weight and the retrains' choice must follow."""
    storage = tmp_path / "ray"
    search = run_script("search.py", "--num-samples", "4", "--max-epochs", "2", "--name", "e2e-lrml", "--metric", "full",
                        "--report-both", "--storage-path", str(storage), "--mlflow", "--dataset", "ml-100k", "--data-dir",
                        str(require(ML_100K)))
    assert "best trial" in search.stdout and "next: python tune/best.py" in search.stdout
    # a console a person can follow: a line per trial, none wider than 110 columns; Ray's output in a log file
    console = (search.stdout + search.stderr).splitlines()
    progress = [line for line in console if line.startswith("[")]
    assert len(console) < 20 and len(progress) == 4 and max(map(len, progress)) <= 110, console
    assert "Started a local Ray instance" in (storage / "e2e-lrml" / "search.log").read_text()
    # the usual tools: TensorBoard files per trial, MLflow runs, the Optuna study (below)
    for trial in storage.glob("e2e-lrml/run_trial_*"):
        (events,) = trial.glob("events.out.tfevents.*")
        scalars = tensorboard_scalars(events)  # TensorBoard writes @ as _; both protocols, every epoch
        assert len(scalars["ray/tune/valid/sampled/ndcg_10"]) == len(scalars["ray/tune/valid/full/ndcg_10"]) >= 1
    mlflow = MlflowClient(f"sqlite:///{storage / 'e2e-lrml' / 'mlflow.db'}")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("e2e-lrml").experiment_id])
    assert len(runs) == 4 and all(mlflow_name(FULL) in run.data.metrics for run in runs)
    record = json.loads((storage / "e2e-lrml" / "lrml_search.json").read_text())
    assert record["outcome"]["trials"] == 4 and record["outcome"]["errors"] == 0
    assert record["settings"]["searcher"] == "tpe" and record["settings"]["scheduler"] == "asha"
    # the trials' CPU time: each epoch's is what the trial's process took since the last, so no trial took more
    # than its own time on every core, and the search's is theirs summed
    trial_cpu = []
    for trial in storage.glob("e2e-lrml/run_trial_*"):
        epochs = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert all(epoch["cpu_seconds"] > 0 for epoch in epochs)
        trial_cpu.append(sum(epoch["cpu_seconds"] for epoch in epochs))
        assert trial_cpu[-1] <= epochs[-1]["time_total_s"] * os.cpu_count()
    assert record["outcome"]["cpu_seconds"] == pytest.approx(sum(trial_cpu), abs=0.05)  # rounded to 0.1 s
    outcome = record["outcome"]
    assert outcome["cpus"] == os.cpu_count()  # a local Ray takes the machine's cores
    assert f"CPU use {100 * outcome['cpu_seconds'] / (outcome['search_seconds'] * outcome['cpus']):.0f}% of " \
        f"{os.cpu_count()} CPUs" in search.stdout
    # the Optuna study is in Optuna's own storage: the starting points first, every trial told
    study = optuna.load_study(study_name="e2e-lrml", storage=JournalStorage(
        JournalFileBackend(str(storage / "e2e-lrml" / "optuna-study.journal"))))
    assert [t.params["reg_weight"] for t in study.trials[:2]] == [0.01, 0.1]
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)

    # best.py reads the searches where they are now: moved, as when a cluster's results are synced to a laptop
    moved = tmp_path / "synced"
    shutil.move(storage, moved)
    # read as if it had selected on sampled validation (bench/metric_choice.py's replay): the trials ranked by that,
    # each at its best epoch by it, and their retrains early-stopped on it
    replayed = Experiment(str(moved / "e2e-lrml"), "sampled")
    frames = replayed.analysis.trial_dataframes
    ranked = [trial.valid[SAMPLED] for trial in replayed.trials]
    assert len(ranked) == 4 and ranked == sorted(ranked, reverse=True)
    assert all(trial.valid[SAMPLED] == frames[trial.trial_id][SAMPLED].max() for trial in replayed.trials)
    assert train_config(replayed, replayed.trials[0]).monitor == "sampled"
    out = tmp_path / "results"
    best = run_script("best.py", str(moved / "e2e-lrml"), "--out", str(out), "--tune-baselines", "--candidates", "2",
                      "--defaults-epochs", "2")
    assert "searching CML with the LRML search's budget" in best.stdout
    for model in ("cml", "bpr"):  # searched beside it, with the same budget and seed
        baseline = json.loads((moved / f"e2e-{model}" / "lrml_search.json").read_text())
        assert baseline["settings"]["model"] == model and baseline["settings"]["num_samples"] == 4
        assert baseline["fingerprint"] == record["fingerprint"]
    for name in ("summary.md", "trials.csv", "best_config.json", "evaluation.json",
                 "optimization_history.png", "hyperparameters.png"):
        assert (out / name).stat().st_size > 0, name
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["model"].unique()) == ["bpr", "cml", "lrml"] and len(trials) == 12
    evaluation = {row["model"]: row for row in json.loads((out / "evaluation.json").read_text())}
    assert list(evaluation) == ["lrml", "cml", "bpr", "ease", "pop"]
    for model in ("lrml", "cml", "bpr"):
        row, searched = evaluation[model], trials[trials["model"] == model]
        # two distinct configurations, each retrained with seeds 1-3; the chosen one has the best mean validation
        candidates = row["candidates"]
        assert len(candidates) == 2 and row["trial"] == candidates[0]["trial"]
        means = [candidate["runs"]["valid"]["full"]["ndcg@10"]["mean"] for candidate in candidates]
        assert means[0] >= means[1] and all(len(c["runs"]["test"]["full"]["ndcg@10"]["values"]) == 3 for c in candidates)
        # the chosen checkpoint's validation number is the one the search reported for that trial's best epoch
        reported = searched.loc[searched["trial_id"] == row["trial"], FULL].item()
        assert row["valid"]["full"]["ndcg@10"] == pytest.approx(reported, abs=1e-6)
        assert row["defaults"]["config"]["max_epochs"] == 2 and len(row["defaults"]["test"]["sampled"]["mrr"]["values"]) == 3
    tried = {float(weight): value for weight, value in evaluation["ease"]["tried"].items()}  # JSON keys are text
    assert evaluation["ease"]["config"]["reg_weight"] == max(tried, key=tried.get) and len(tried) == 15
    assert max(tried.values()) == pytest.approx(evaluation["ease"]["valid"]["full"]["ndcg@10"], abs=1e-9)
    for row in evaluation.values():
        for protocol in ("sampled", "full"):
            ndcg = row["test"][protocol]["ndcg@10"]
            assert ndcg["ci95"][0] <= ndcg["mean"] <= ndcg["ci95"][1]
        assert set(row["p_values"]) == set(evaluation) - {row["model"]}
        assert all(0 < p <= 1 for pair in row["p_values"].values() for p in pair.values())
    # the per-user file holds every test user's numbers behind those means: a pooled test over seeds reads it
    per_user = pd.read_parquet(out / "per_user.parquet")
    assert len(per_user) == 5 * 2 * 943 and per_user.groupby(["model", "protocol"])["user"].nunique().eq(943).all()
    for (model, protocol), rows in per_user.groupby(["model", "protocol"]):
        assert rows["ndcg@10"].mean() == pytest.approx(evaluation[model]["test"][protocol]["ndcg@10"]["mean"], abs=1e-12)
    summary = (out / "summary.md").read_text()
    for text in ("LRML", "CML", "BPR-MF", "EASE", "popularity", "p vs LRML", "Tuned against not tuning",
                 "retrained with seeds 1, 2, 3", "Verdict"):
        assert text in summary, text

    recommended = run_script("best.py", str(moved / "e2e-lrml"), "--recommend", "414").stdout.strip().splitlines()
    assert len(recommended) == 10 and all("(" in line for line in recommended)  # titles with years


def tensorboard_scalars(events: Path) -> dict[str, list[float]]:
    """Every scalar in a TensorBoard event file (records: length, its CRC, an Event protobuf, its CRC)."""
    data, offset, found = events.read_bytes(), 0, {}
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            found.setdefault(value.tag, []).append(value.simple_value)
    return found
