"""A search under faults, on a real local Ray: interrupted, killed, doubled, diverging."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
from conftest import REPO, processes, terminated_trials
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lrml.errors import UserError
from lrml_tune.sweep.cores import CoreLedger, lent_threads
from lrml_tune.sweep.faults import PROBE_BYTES, probe
from lrml_tune.sweep.local_ray import exclusive_local_ray, running_ray_addresses

pytestmark = pytest.mark.ray  # starts Ray: left out by `pytest -m "not ray"`

SEARCH = [sys.executable, str(REPO / "tune" / "search.py")]


def start(storage: Path, name: str, *extra: str, log: Path) -> subprocess.Popen:
    """A search in the background, its output in ``log`` (a pipe would fill and stall it)."""
    return subprocess.Popen([*SEARCH, "--name", name, "--storage-path", str(storage), *extra], cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


def study(experiment: Path) -> optuna.Study:
    return optuna.load_study(study_name=experiment.name, storage=JournalStorage(
        JournalFileBackend(str(experiment / "optuna-study.journal"))))


def test_ctrl_c_and_sigterm_stop_the_search_and_say_how_to_continue(tmp_path):
    storage = tmp_path / "ray"
    experiment = storage / "stopped"
    shown = 0.0  # the best validation nDCG@10 the progress lines have shown so far
    for number, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
        log = tmp_path / f"{name}.log"
        process = start(storage, "stopped", "--num-samples", "6", "--max-epochs", "3",
                        *(["--resume"] if number == signal.SIGTERM else []), log=log)
        before = len(terminated_trials(experiment))
        wait_for(lambda: len(terminated_trials(experiment)) > before)
        process.send_signal(number)
        assert process.wait(timeout=180) == 128 + number, log.read_text()[-3000:]
        output = log.read_text()
        assert f"search interrupted ({name}): " in output and " of 6 trials finished; nothing is summarised" in output
        assert f"search.py --resume --name stopped --storage-path {storage}" in output
        assert "Tuner.restore" not in output and "best trial" not in output
        record = json.loads((experiment / "lrml_search.json").read_text())
        assert record["outcome"] is None  # no summary of an unfinished search
        assert min(progress_bests(output), default=shown) >= shown  # a resumed run knows the earlier trials' best
        shown = max(progress_bests(output), default=shown)
    resumed = subprocess.run([*SEARCH, "--resume", "--name", "stopped", "--storage-path", str(storage)], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "6 trials (0 failed)" in resumed.stdout, resumed.stdout[-3000:]
    # the resumed run may end the trials it restores without printing a line (seen in CI): checked if it printed any
    assert shown > 0 and min(progress_bests(resumed.stdout), default=shown) >= shown
    # the time spent is the last run's, and so are the epochs it is set against: no share above 100%
    outcome = json.loads((experiment / "lrml_search.json").read_text())["outcome"]
    assert 0 < outcome["epochs_this_run"] < outcome["epochs_trained"]
    share = re.search(r"in the last run, after a resume\); .* the last run's \d+ trial slot\(s\) (\d+)% inside", resumed.stdout)
    assert share and int(share.group(1)) <= 100, resumed.stdout[-3000:]


def progress_bests(output: str) -> list[float]:
    """The best validation nDCG@10 of each progress line, in order."""
    return [float(value) for value in re.findall(r"\| best sampled nDCG@10 ([0-9.]+) ", output)]


def test_ctrl_c_while_every_trial_runs_is_an_interrupt_not_a_finished_search(tmp_path):
    storage = tmp_path / "ray"
    experiment = storage / "running"
    log = tmp_path / "running.log"
    process = start(storage, "running", "--num-samples", "2", "--max-epochs", "50", "--scheduler", "none", log=log)
    reported = lambda: sum(bool(f.read_text().strip()) for f in experiment.glob("run_trial_*/result.json"))  # noqa: E731
    wait_for(lambda: reported() == 2)  # both trials run; none is pending, none has finished
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=180) == 130, log.read_text()[-3000:]
    output = log.read_text()
    assert "search interrupted (SIGINT): 0 of 2 trials finished" in output and "best trial" not in output
    assert json.loads((experiment / "lrml_search.json").read_text())["outcome"] is None


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path):
    storage = tmp_path / "ray"
    experiment = storage / "killed"
    process = start(storage, "killed", "--num-samples", "8", "--max-epochs", "4", "--grace-period", "2",
                    log=tmp_path / "killed.log")  # rungs at 2 and 4 epochs
    try:
        wait_for(lambda: len(terminated_trials(experiment)) >= 3)  # in the state Tune saves every 2 s
        told_before = {t.number: (t.state, t.value) for t in study(experiment).trials if t.state.is_finished()}
    finally:  # also when the wait fails: a search left running refuses every later test's search
        process.kill()  # SIGKILL: no chance to save anything
        process.wait(timeout=60)
    before = terminated_trials(experiment)  # what the state saved last says: all a resume can know
    assert len(before) < 8, "the search finished before it could be killed"
    with open(experiment / "scheduler-state.pickle", "rb") as handle:
        rungs_before = {milestone: dict(recorded) for milestone, recorded in pickle.load(handle)["_brackets"][0]._rungs}

    resumed = subprocess.run([*SEARCH, "--resume", "--name", "killed", "--storage-path", str(storage)], cwd=REPO,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0 and "8 trials (0 failed)" in resumed.stdout, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = terminated_trials(experiment)
    assert len(after) == 8
    for trial, text in before.items():  # finished trials were kept as they were, not run again
        assert after[trial] == text
    trials = study(experiment).trials
    for number, verdict in told_before.items():  # the searcher's history survived
        assert (trials[number].state, trials[number].value) == verdict
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) >= 8
    with open(experiment / "scheduler-state.pickle", "rb") as handle:
        rungs_after = {milestone: recorded for milestone, recorded in pickle.load(handle)["_brackets"][0]._rungs}
    for milestone, recorded in rungs_before.items():  # ASHA's rungs survived and grew
        assert recorded.items() <= rungs_after[milestone].items()
    assert sum(map(len, rungs_after.values())) > sum(map(len, rungs_before.values()))


def test_a_second_search_on_the_machine_refuses_and_the_first_finishes(tmp_path):
    storage = tmp_path / "ray"
    both = [start(storage, name, "--num-samples", "2", "--max-epochs", "1", log=tmp_path / f"{name}.log")
            for name in ("first", "second")]
    codes = [process.wait(timeout=600) for process in both]
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("first", "second")]
    assert sorted(codes) == [0, 2], logs
    finished, refused = (logs[0], logs[1]) if codes[0] == 0 else (logs[1], logs[0])
    assert "2 trials (0 failed)" in finished
    assert "error: another search runs its own Ray on this machine (pid " in refused
    assert "pass its address to each (`--address 127.0.0.2:6379`)" in refused and "Traceback" not in refused


def test_a_diverging_trial_fails_with_its_reason_and_never_wins(tmp_path):
    space = tmp_path / "space.json"  # BPR-MF's defaults, or a learning rate that overflows at once
    space.write_text(json.dumps({"lr": {"type": "choice", "values": [0.003, 1e30]},
                                 "embedding_dim": {"type": "choice", "values": [32, 100]}}))
    done = subprocess.run([*SEARCH, "--model", "bpr", "--name", "diverging", "--storage-path", str(tmp_path),
                           "--space", str(space), "--searcher", "random", "--seed", "1", "--num-samples", "4",
                           "--max-epochs", "2", "--scheduler", "none"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "diverging" / "lrml_search.json").read_text())["outcome"]
    assert record["errors"] >= 1 and record["trials"] == 4
    assert all("TrainingDiverged: epoch 1: loss nan" in reason for reason in record["failures"].values())
    assert record["best_config"]["lr"] == 0.003
    states = [t.state for t in study(tmp_path / "diverging").trials]
    assert states.count(TrialState.FAIL) == record["errors"]


def test_a_search_refuses_beside_a_ray_it_did_not_start(tmp_path):
    """A running local Ray is found by its raylet's ``--gcs-address`` flag (``lrml_tune.sweep.local_ray``): if a Ray
    release starts its raylet otherwise, this fails before a search could start a second Ray beside it."""
    ray.init(_node_ip_address="127.0.0.2", num_cpus=1, include_dashboard=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address in running_ray_addresses()
        with pytest.raises(UserError, match=rf"a Ray instance already runs on this machine \(GCS at {address}"):
            with exclusive_local_ray("beside", lock_file=tmp_path / "lock"):
                pass
    finally:
        ray.shutdown()
    wait_for(lambda: address not in running_ray_addresses(), timeout=60)


def test_a_trial_keeps_its_own_threads_once_its_core_ledger_is_gone():
    """The ledger's node may die under a running trial (a multi-node search lost a node in CI that way): the
    trial trains on with its own threads instead of failing on the dead actor."""
    ray.init(_node_ip_address="127.0.0.2", num_cpus=1, include_dashboard=False)
    try:
        ledger = CoreLedger.options(name="ledger-of-a-test").remote()
        ray.get(ledger.lend.remote({"lent-to": 2}))
        assert lent_threads("ledger-of-a-test", "lent-to", 1) == min(2, len(os.sched_getaffinity(0)))
        assert lent_threads("ledger-of-a-test", "not-named", 1) == 1
        ray.kill(ledger)
        assert lent_threads("ledger-of-a-test", "lent-to", 1) == 1
    finally:
        ray.shutdown()


def test_a_search_without_an_address_starts_its_own_ray_whatever_ray_address_names(tmp_path):
    """Ray would join the cluster RAY_ADDRESS names, or the one a dead Ray's /tmp/ray/ray_current_cluster still
    names, and wait for it forever: without ``--address`` a search starts its own, as its help says. Its one trial
    is lent the cores no other trial will take."""
    nobody = {**os.environ, "RAY_ADDRESS": "127.0.0.9:6399"}  # a loopback address where nothing listens
    done = subprocess.run([*SEARCH, "--name", "alone", "--storage-path", str(tmp_path), "--num-samples", "1",
                           "--max-epochs", "4"], cwd=REPO, capture_output=True, text=True, timeout=600, env=nobody)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 trials (0 failed)" in done.stdout
    # no trial is left to start, so the one trial is lent the machine's idle cores: not for its first epoch, when
    # the driver does not yet know its node, and from an epoch after its first report
    [results] = tmp_path.glob("alone/run_trial_*/result.json")
    threads = [json.loads(line)["threads"] for line in results.read_text().splitlines()]
    assert threads[0] == 1 and threads[-1] == os.cpu_count(), threads


NEEDS_ROOT = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="mounting a size-limited tmpfs needs root")


@NEEDS_ROOT
def test_the_storage_probe_finds_a_full_or_read_only_disk_and_leaves_nothing(tmp_path):
    """A trial failed on a full disk may leave no error text; the probe's own write names the fault."""
    disk = tmp_path / "half-a-megabyte"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={PROBE_BYTES // 2}", "tmpfs", str(disk)], check=True)
    try:
        assert probe(str(tmp_path)) is None and not list(tmp_path.glob(".lrml-write-probe-*"))
        full = probe(str(disk))
        assert full.path == str(disk) and "No space left on device" in full.reason and not list(disk.iterdir())
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert "Read-only file system" in probe(str(disk)).reason
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


@NEEDS_ROOT
def test_a_search_whose_storage_fills_stops_in_a_line_and_resumes_once_there_is_room(tmp_path):
    """A real full disk: a 40 MB tmpfs takes the experiment, and every trial keeps a checkpoint of some 12 MB,
    so the disk fills after a few trials of eight (one at a time). The saved state, which ``--resume`` reads, is
    whole: the space the search held back (``lrml_tune.sweep.faults.Reserve``) is freed for its last writes. Grown,
    the disk lets ``--resume`` finish every trial, the ones that had finished byte for byte as they were."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], check=True)
    try:
        space = tmp_path / "space.json"  # embeddings of 100: checkpoints of a known size
        space.write_text(json.dumps({"lr": {"type": "loguniform", "low": 0.001, "high": 0.01}}))
        stopped = subprocess.run([*SEARCH, "--name", "filling", "--storage-path", str(disk), "--space", str(space),
                                  "--num-samples", "8", "--max-epochs", "2", "--scheduler", "none", "--concurrency", "1"],
                                 cwd=REPO, capture_output=True, text=True, timeout=600)
        assert stopped.returncode == 74, stopped.stdout[-3000:] + stopped.stderr[-3000:]
        assert f"search stopped: cannot write to {disk}" in stopped.stderr and "No space left on device" in stopped.stderr
        assert "--resume --name filling" in stopped.stderr and "Traceback" not in stopped.stdout + stopped.stderr
        assert len(stopped.stderr.strip().splitlines()) <= 6, stopped.stderr
        finished = terminated_trials(disk / "filling")
        assert 0 < len(finished) < 8, "the disk should have filled after some trials and before all of them"
        for text in finished.values():  # what finished is whole: every epoch's row reads back
            assert [json.loads(row)["epoch"] for row in text.splitlines()] == [1, 2]

        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        resumed = subprocess.run([*SEARCH, "--resume", "--name", "filling", "--storage-path", str(disk)],
                                 cwd=REPO, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "8 trials (" in resumed.stdout and "Traceback" not in resumed.stdout + resumed.stderr
        after = terminated_trials(disk / "filling")
        assert len(after) == 8 and {trial: after[trial] for trial in finished} == finished
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_trials_whose_processes_are_killed_are_retried_and_all_finish(tmp_path):
    """Trial processes killed mid-epoch, four times: each trial is retried from its checkpoint (--max-failures)."""
    storage = tmp_path / "ray"
    # trials long enough (30 epochs, never stopped early) that four kills, 4 s apart, land before the search ends
    process = start(storage, "killing", "--num-samples", "4", "--max-epochs", "30", "--patience", "30", "--scheduler",
                    "none", "--max-failures", "4", log=tmp_path / "killing.log")
    killed = 0
    while killed < 4 and process.poll() is None:
        trials = processes(lambda command, files: command.startswith("ray::ImplicitFunc") or
                           command.startswith("ray::run_trial"))
        if trials:
            os.kill(min(trials), signal.SIGKILL)
            killed += 1
            time.sleep(4)  # let the trial come back before the next kill
        time.sleep(0.5)
    assert process.wait(timeout=900) == 0, (tmp_path / "killing.log").read_text()[-3000:]
    assert killed == 4 and "4 trials (0 failed)" in (tmp_path / "killing.log").read_text()
