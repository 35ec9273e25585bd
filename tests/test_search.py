"""The distributed search on a real local Ray: end to end with best.py, 1 vs 2 workers, and --resume."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from conftest import REPO
from lrml.data import load_dataset, prepare
from lrml.train import MONITOR

TUNE = REPO / "tune"
sys.path.insert(0, str(TUNE))


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, str(TUNE / script), *args], capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


def test_resource_plan_fills_the_cluster_without_stranding_cpu():
    from resources import TRIAL_RESOURCES, plan_resources

    laptop = plan_resources({"CPU": 2.0}, workers=1, cpus_per_worker=1, gpus_per_worker=0)
    assert laptop.concurrency == 2 and laptop.worker_resources == {"CPU": 1}
    # a trial function asking for any CPU would leave a 1-CPU node unable to host a 1-CPU worker
    assert TRIAL_RESOURCES["CPU"] == 0 and TRIAL_RESOURCES["memory"] > 0
    gpu_node = plan_resources({"CPU": 16.0, "GPU": 1.0}, workers=2, cpus_per_worker=2, gpus_per_worker=0.25)
    assert gpu_node.concurrency == 2 and gpu_node.worker_resources == {"CPU": 2, "GPU": 0.25}
    assert plan_resources({"CPU": 3.0}, workers=1, cpus_per_worker=1.5, gpus_per_worker=0).torch_threads == 1
    with pytest.raises(ValueError, match="the cluster has 2 CPU and 0 GPU now .* pass --concurrency"):
        plan_resources({"CPU": 2.0}, workers=2, cpus_per_worker=1, gpus_per_worker=1)
    # a cluster that autoscales from zero GPU workers: the user's concurrency stands
    scaling = plan_resources({"CPU": 4.0}, workers=2, cpus_per_worker=2, gpus_per_worker=1, concurrency=4)
    assert (scaling.concurrency, scaling.fits_now) == (4, 0)
    with pytest.raises(ValueError, match="concurrency must be at least 1; got 0"):
        plan_resources({"CPU": 2.0}, workers=1, cpus_per_worker=1, gpus_per_worker=0, concurrency=0)


def test_search_then_best_end_to_end(tmp_path):
    storage = tmp_path / "ray"
    search = run_script("search.py", "--num-samples", "4", "--max-epochs", "2", "--name", "e2e",
                        "--storage-path", str(storage))
    assert "best trial:" in search.stdout and "next: python tune/best.py" in search.stdout
    settings = json.loads((storage / "e2e" / "lrml_search.json").read_text())
    assert settings["trials"] == 4 and settings["errors"] == 0
    assert 0 < settings["training_share"] < 1
    # the authors' and the sketch's settings were the first two trials
    configs = [json.loads(p.read_text()) for p in sorted(storage.glob("e2e/run_trial_*/params.json"))]
    assert {c["reg_weight"] for c in configs} >= {0.01, 0.1}

    # best.py reads the experiment where it is now: moved, as when a cluster's results are synced to a laptop
    moved = tmp_path / "synced" / "e2e-copy"
    shutil.move(storage / "e2e", moved)
    out = tmp_path / "results"
    run_script("best.py", str(moved), "--out", str(out), "--top-k", "2")
    for name in ("summary.md", "trials.csv", "best_config.json", "evaluation.json",
                 "optimization_history.png", "hyperparameters.png"):
        assert (out / name).stat().st_size > 0, name
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and trials[MONITOR].is_monotonic_decreasing
    summary = (out / "summary.md").read_text()
    for model in ("LRML (tuned)", "popularity", "BPR-MF", "CML"):
        assert model in summary
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [row["model"] for row in evaluation][:2] == ["LRML (tuned)"] * 2
    assert evaluation[0]["checkpoint"].startswith(f"{moved}/train/")
    # best.py's validation numbers of the best checkpoint are the ones the search reported
    assert evaluation[0]["valid"]["sampled"]["ndcg@10"] == pytest.approx(trials[MONITOR].iloc[0], abs=1e-6)
    best = json.loads((out / "best_config.json").read_text())
    assert set(best) >= {"embedding_dim", "memory_size", "margin", "reg_weight", "lr", "batch_size"}

    recommended = run_script("best.py", str(moved), "--recommend", "414").stdout.strip().splitlines()
    assert len(recommended) == 10 and all("(" in line for line in recommended)  # titles with years


@pytest.fixture(scope="module")
def local_ray():
    ray.init(_node_ip_address="127.0.0.2", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def fit_workers(workers: int, path: Path) -> pd.DataFrame:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lrml.distributed import train_loop_per_worker
    from lrml.train import defaults
    from dataclasses import asdict, replace

    config = asdict(replace(defaults("lrml"), max_epochs=3))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config, "dataset_path": str(path), "dataset": "ml-latest-small", "data_dir": None,
                           "fingerprint": load_dataset(path).fingerprint, "threads": 1},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        datasets={"train": ray.data.read_parquet(str(path / "train.parquet"))},
        run_config=RunConfig(name=f"workers-{workers}", storage_path=str(path.parent / "train-runs")))
    return trainer.fit().metrics_dataframe


def test_two_workers_match_one_worker(local_ray, tmp_path):
    path = prepare(out_dir=tmp_path / "small")
    one, two = fit_workers(1, path), fit_workers(2, path)
    assert list(one["epoch"]) == list(two["epoch"]) == [1, 2, 3]
    total = load_dataset(path).manifest["counts"]["train"]
    assert one["worker_pairs"].iloc[0] == total
    assert two["workers"].iloc[0] == 2 and abs(two["worker_pairs"].iloc[0] - total / 2) <= 2
    # the same global batch and the same validation users: the metric agrees within noise
    assert abs(one[MONITOR].iloc[-1] - two[MONITOR].iloc[-1]) < 0.03, (one[MONITOR].tolist(), two[MONITOR].tolist())


def test_resume_keeps_finished_trials(tmp_path):
    storage = tmp_path / "ray"
    args = [sys.executable, str(TUNE / "search.py"), "--num-samples", "4", "--max-epochs", "3", "--name", "resumable",
            "--storage-path", str(storage)]
    log = open(tmp_path / "search.log", "w+")  # a file, not a pipe: Ray's output would fill a pipe and stall it
    process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    experiment = storage / "resumable"
    deadline = time.time() + 300
    while time.time() < deadline and not finished_trials(experiment):
        time.sleep(1)
    process.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves its state and stops
    process.wait(timeout=180)
    log.seek(0)
    before = finished_trials(experiment)
    assert before, log.read()[-3000:]
    assert len(before) < 4, "the search finished before it could be interrupted"
    results_before = {trial: (experiment / folder / "result.json").read_text() for trial, folder in before.items()}

    resumed = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = finished_trials(experiment)
    assert len(after) == 4
    for trial, text in results_before.items():  # finished trials were kept, not run again
        assert (experiment / after[trial] / "result.json").read_text() == text


def finished_trials(experiment: Path) -> dict[str, str]:
    """Trial id -> folder of each trial whose last reported row says it is done."""
    done = {}
    for result in experiment.glob("run_trial_*/result.json"):
        lines = result.read_text().strip().splitlines()
        if lines and json.loads(lines[-1]).get("done"):
            done[result.parent.name.split("_")[2]] = result.parent.name
    return done
