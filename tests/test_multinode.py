"""A real Ray cluster on loopback addresses: trials land on both nodes, losing a node mid-trial costs a
restart from the trial's last checkpoint, never a finished trial; a cluster that starts with no room
for a trial runs the search once a node joins; a trial whose workers never fit fails in bounded time."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
from conftest import ML_100K, REPO, free_ports, processes

from lrml.evaluate import EVAL_BATCH_USERS, Evaluator
from lrml.model import LRML, LRMLConfig
from lrml.train import TrainConfig
from lrml_tune.comparison.cluster_runs import RaySolves, RayTasks
from lrml_tune.comparison.ease_grid import LocalSolves
from lrml_tune.comparison.ray_data_ranking import ray_data_ranks
from lrml_tune.comparison.retrain import retrain
from lrml_tune.sweep.trainable import DatasetRef

pytestmark = pytest.mark.ray  # starts Ray: left out by `pytest -m "not ray"`

HEAD, WORKER = "127.0.0.2", "127.0.0.3"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_start(*args: str) -> None:
    ray = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray), "start", *args], env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def processes_of(temp_dir: Path, ip: str | None = None) -> list[int]:
    """Every process of the Ray cluster kept in ``temp_dir`` (of its node at ``ip`` only, if given). A process
    belongs to it if its command line names the folder or any file it holds open lies inside it, so workers
    that have renamed themselves ``ray::...`` are found by their log files."""
    def belongs(command: str, files) -> bool:
        inside = str(temp_dir) in command or any(path.startswith(str(temp_dir)) for path in files())
        return inside and (ip is None or f"={ip}" in command or f" {ip} " in command)
    return list(processes(belongs))


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LoopbackCluster:
    """Ray nodes on loopback addresses, on free ports, in a temp folder of their own; ``stop`` kills
    every process they started, and only those."""

    def __init__(self):
        self.temp_dir = Path("/tmp") / f"lrml-ray-{os.getpid()}"  # short: Ray's socket paths have a length limit
        # Every port either node will take, picked at once on every address so no two are the same.
        gcs, self.dashboard_port, *node_ports = free_ports(12, "0.0.0.0")
        self.address = f"{HEAD}:{gcs}"
        self.node_ports = {HEAD: node_ports[:5], WORKER: node_ports[5:]}

    def start(self, ip: str, cpus: int) -> None:
        agent, metrics, runtime_env, node_manager, object_manager = self.node_ports[ip]
        ports = [f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                 f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_manager}",
                 f"--object-manager-port={object_manager}"]
        common = [f"--num-cpus={cpus}", "--disable-usage-stats", f"--node-ip-address={ip}", *ports]
        if ip == HEAD:
            ray_start("--head", f"--port={self.address.split(':')[1]}", f"--temp-dir={self.temp_dir}",
                      "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}", *common)
        else:
            ray_start(f"--address={self.address}", *common)

    def kill_node(self, ip: str) -> None:
        kill(processes_of(self.temp_dir, ip))

    def stop(self) -> None:
        for _ in range(3):  # a process may start another while the first ones die
            kill(processes_of(self.temp_dir))
            time.sleep(1)
        assert processes_of(self.temp_dir) == [], "a process of the test cluster outlived it"


@pytest.fixture
def cluster():
    started = LoopbackCluster()
    yield started
    started.stop()


@pytest.fixture
def two_nodes(cluster):
    """A head on 127.0.0.2 and a worker node on 127.0.0.3, one CPU each."""
    cluster.start(HEAD, 1)
    cluster.start(WORKER, 1)
    return cluster


def read(log) -> str:
    """Everything written so far to a search's log file."""
    log.seek(0)
    return log.read()


def search(cluster: LoopbackCluster, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "tune" / "search.py"), "--address", cluster.address,
            "--node-ip-address", HEAD, "--storage-path", str(storage), *extra]


def trial_rows(experiment: Path) -> dict[str, list[dict]]:
    rows = {}
    for result in experiment.glob("run_trial_*/result.json"):
        rows[result.parent.name.split("_")[2]] = [json.loads(line) for line in result.read_text().splitlines() if line]
    return rows


def test_trials_run_on_both_nodes_and_survive_losing_one(two_nodes, tmp_path):
    # the default storage path, under a name no earlier search in this checkout used (its log removed after)
    name = f"never-{tmp_path.name}"
    refused = subprocess.run(search(two_nodes, tmp_path)[:-2] + ["--num-samples", "1", "--name", name],
                             env=ENV, capture_output=True, text=True, timeout=300, cwd=REPO)
    shutil.rmtree(REPO / "results" / "ray" / name, ignore_errors=True)
    assert refused.returncode != 0 and "pass --storage-path that every node can reach" in refused.stderr

    storage = tmp_path / "shared"
    done = subprocess.run(search(two_nodes, storage, "--num-samples", "4", "--max-epochs", "2", "--name", "spread"),
                          env=ENV, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = trial_rows(storage / "spread")
    nodes = {trial: {row["train_node_ip"] for row in trial_rows} for trial, trial_rows in rows.items()}
    print("trial -> node:", json.dumps({trial: sorted(ips) for trial, ips in nodes.items()}))
    assert len(rows) == 4 and set().union(*nodes.values()) == {HEAD, WORKER}

    # the fault: kill the worker node while a trial trains there, once that trial has a checkpoint
    log = open(tmp_path / "fault.log", "w+")  # a file, not a pipe: Ray's output would fill a pipe and stall the search
    # --grace-period 30: ASHA stops no trial early, so the one we hit is still training when its node dies
    running = subprocess.Popen(search(two_nodes, storage, "--num-samples", "2", "--max-epochs", "30",
                                      "--grace-period", "30", "--name", "fault"),
                               env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    deadline, victim = time.time() + 300, None
    while time.time() < deadline and victim is None:
        for stdout in (storage / "fault").glob("run_trial_*/stdout"):  # each trial's own output (log_to_file)
            found = re.search(rf"run (\w+): worker rank 0 of 1 \(pid \d+, node {re.escape(WORKER)}\)",
                              stdout.read_text())
            if found and any(stdout.parent.glob("checkpoint_*")):
                victim = found.group(1)
        time.sleep(0.2)
    assert victim, "no trial trained on the worker node"
    two_nodes.kill_node(WORKER)
    running.wait(timeout=600)
    output = read(log)
    assert running.returncode == 0 and "2 trials (0 failed)" in output, output[-4000:]
    rows = trial_rows(storage / "fault")
    assert len(rows) == 2
    epochs = [row["epoch"] for row in rows[victim]]
    print(f"fault: trial {victim} reported epochs {epochs} on nodes {[row['train_node_ip'] for row in rows[victim]]}")
    on_head = [row["epoch"] for row in rows[victim] if row["train_node_ip"] == HEAD]
    assert on_head and min(on_head) > 1, epochs  # moved to the surviving node and went on from a checkpoint
    assert rows[victim][-1]["train_node_ip"] == HEAD


def test_a_cluster_that_scales_from_zero_gets_its_trials_once_nodes_join(cluster, tmp_path):
    """As on the cloud launchers: a head with no CPU for workers; a node joins once the search waits."""
    cluster.start(HEAD, 0)
    storage = tmp_path / "shared"
    refused = subprocess.run(search(cluster, storage, "--num-samples", "1"), env=ENV, capture_output=True, text=True,
                             timeout=300, cwd=REPO)
    assert refused.returncode != 0 and "the cluster has 0 CPU and 0 GPU now" in refused.stderr, refused.stderr[-2000:]
    assert "pass --concurrency N" in refused.stderr

    log = open(tmp_path / "scale.log", "w+")
    running = subprocess.Popen(search(cluster, storage, "--num-samples", "2", "--max-epochs", "2",
                                      "--concurrency", "2", "--name", "scale"),
                               env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline and "wait for the autoscaler" not in read(log):
        assert running.poll() is None, read(log)[-4000:]
        time.sleep(0.5)
    cluster.start(WORKER, 2)  # what the autoscaler would do: a node with room for both trials
    running.wait(timeout=600)
    output = read(log)
    assert running.returncode == 0 and "2 trials (0 failed)" in output, output[-4000:]
    nodes = {row["train_node_ip"] for rows in trial_rows(storage / "scale").values() for row in rows}
    assert nodes == {WORKER}


def test_a_trial_whose_workers_can_never_start_fails_in_bounded_time(cluster, tmp_path):
    """Workers that need more CPU than any node has: each attempt gives up after --worker-start-timeout,
    the attempts stop after --max-failures restarts, and the search ends with the failure reported."""
    cluster.start(HEAD, 2)
    started = time.time()
    done = subprocess.run(search(cluster, tmp_path / "shared", "--num-samples", "1", "--max-epochs", "1",
                                 "--workers-per-trial", "2", "--cpus-per-worker", "2", "--concurrency", "1",
                                 "--worker-start-timeout", "3", "--max-failures", "1", "--name", "starved"),
                          env=ENV, capture_output=True, text=True, timeout=400, cwd=REPO)
    output = done.stdout + done.stderr
    failures = [line for line in done.stdout.splitlines() if line.startswith("failed: run_trial_")]
    assert done.returncode == 1 and "1 trials (1 failed), 0 epochs" in done.stdout, output[-4000:]
    assert len(failures) == 1 and "worker group startup timed out after 3.0 seconds" in failures[0], output[-4000:]
    assert "no trial reported a validation metric" in done.stderr and "Traceback" not in done.stderr
    assert time.time() - started < 300


def test_ray_data_evaluation_on_two_nodes_ranks_as_one_process_does(two_nodes, ml100k_dataset):
    """Two actors, one a node (each has one CPU), four blocks of ml-100k's 943 test users: the ranks, and so every
    metric, are those of the evaluator in one process, in both protocols."""
    torch.manual_seed(0)
    model = LRML(LRMLConfig(ml100k_dataset.num_users, ml100k_dataset.num_items, embedding_dim=16, memory_size=5))
    with torch.no_grad():  # weights of a scale where scores are far apart, as a trained model's are
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    expected = Evaluator(ml100k_dataset).ranks(model, "test")
    ray.init(address=two_nodes.address, log_to_driver=False)
    try:
        found = ray_data_ranks(model, str(ml100k_dataset.path), "test", actors=2, block_users=EVAL_BATCH_USERS)
    finally:
        ray.shutdown()
    assert set(found) == {"sampled", "full"} and len(found["full"]) == 943
    for protocol in ("sampled", "full"):
        assert torch.equal(found[protocol], expected[protocol]), protocol
    assert expected["full"].float().std() > 100  # ranks spread over the catalogue, not one tie


def test_best_py_work_on_both_nodes_of_the_cluster_gives_the_numbers_of_a_local_run(two_nodes, ml100k_dataset, capsys):
    """best.py --address: each retrain a Ray task of one CPU, and each EASE weight's solve (a round of four); on two
    nodes of one CPU each they land on both, and give a local run's numbers: training is deterministic for a
    configuration and seed, and a solve on one thread is the same solve wherever it runs."""
    path = str(ml100k_dataset.path)
    configs = [TrainConfig(embedding_dim=8, memory_size=2, max_epochs=2, patience=2, batch_size=4096, seed=seed)
               for seed in (1, 2, 3, 4)]
    here = retrain(configs, path, "here")
    weights = [1.0, 100.0, 316.227766, 1000.0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a task's solve runs on its one CPU's thread; a Cholesky's rounding follows the threads
    try:
        local = LocalSolves(ml100k_dataset, Evaluator(ml100k_dataset))
        scores_here = local.scores(weights)
        ray.init(address=two_nodes.address, log_to_driver=False)
        try:
            dataset = DatasetRef(path, "ml-100k", str(ML_100K), ml100k_dataset.fingerprint)
            on_cluster = retrain(configs, path, "cluster", runner=RayTasks(dataset))
            solves = RaySolves(ml100k_dataset, dataset)
            scores_there = solves.scores(weights)  # a round of tune_ease: every weight at once
        finally:
            ray.shutdown()
        chosen_there = solves.model(316.227766).weights
    finally:
        torch.set_num_threads(threads)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  cluster: ")]
    assert len(lines) == 4 and {re.search(r"trained on (\S+) ", line)[1] for line in lines} == {HEAD, WORKER}, lines
    for local_final, remote in zip(here, on_cluster):
        assert {k: v for k, v in remote.items() if k != "seconds"} == \
            {k: v for k, v in local_final.items() if k != "seconds"}
    assert solves.nodes == {HEAD, WORKER} and scores_there == scores_here and len(set(scores_here)) == 4
    assert torch.equal(chosen_there, local.model(316.227766).weights)
