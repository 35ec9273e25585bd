"""A search on cloud storage: an S3 API served on loopback by moto, reached as a user reaches S3 (the endpoint and
keys in the environment), killed and resumed, and its best checkpoint pulled by ``tune/best.py``."""
from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pyarrow.fs
import pytest
from conftest import ML_100K, REPO, free_port, require
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from lrml.train import MONITOR
from lrml_tune.sweep.driver import STORAGE_FAULT_STATUS
from lrml_tune.sweep.stopping import make_scheduler
from lrml_tune.sweep.tuner import SCHEDULER_STATE_FILE

pytestmark = pytest.mark.ray  # starts Ray: left out by `pytest -m "not ray"`

BUCKET = "lrml-test"


class Gate:
    """A TCP proxy on loopback in front of the storage server: ``down`` cuts every connection and refuses new
    ones, as a storage that goes away does, and ``up`` brings it back with everything it held (moto keeps its
    objects in memory, so the server itself must stay up)."""

    def __init__(self, target_port: int):
        self.port, self.target_port = port_outside_ephemeral_range(), target_port
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), backlog=64)  # SO_REUSEADDR: the port again at once
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is still starting: the client sees a cut connection and retries
                client.close()
                continue
            with self.lock:
                self.connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def port_outside_ephemeral_range() -> int:
    """A free loopback port below the range the system hands out to outgoing connections: while the gate is
    down, a free port from that range was taken by some process's connection, and the gate could not bind it
    again ("Address already in use", in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.Random().sample(range(max(1024, low - 8192), low), 256):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port below {low}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[tuple[dict[str, str], Gate]]:
    """moto's S3 server on a free loopback port behind a ``Gate``, a bucket on it; the environment that reaches it
    through the gate, and the gate."""
    port = free_port()
    gate = Gate(port)
    gate.up()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        client = pyarrow.fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing",
                                         secret_key="testing", region="us-east-1", allow_bucket_creation=True)
        deadline = time.time() + 60
        while True:
            try:
                client.create_dir(BUCKET)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "moto's server did not start"
                time.sleep(0.3)
        yield env, gate
    finally:
        gate.down()
        server.kill()
        server.wait()


def bucket(env: dict[str, str]) -> pyarrow.fs.S3FileSystem:
    return pyarrow.fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing",
                                   secret_key="testing", region="us-east-1")


def search(env: dict[str, str], name: str, *extra: str, log: Path) -> subprocess.Popen:
    """A search of ml-100k (whose 1,682 items make best.py's EASE fast) on ``s3://BUCKET/searches/name`` in the
    background, its output in ``log``."""
    return subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), "--name", name, "--storage-path",
                             f"s3://{BUCKET}/searches", "--dataset", "ml-100k", "--data-dir", str(require(ML_100K)),
                             *extra], cwd=log.parent, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            text=True)


def terminated_trials(env: dict[str, str], name: str) -> dict[str, str]:
    """Trial id -> result.json text of each trial that the experiment state on S3 marks finished: what a resume
    reads (``conftest.terminated_trials`` for a local folder)."""
    storage, folder = bucket(env), f"{BUCKET}/searches/{name}"
    states = [info for info in storage.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
              if info.base_name.startswith("experiment_state-")]
    if not states:
        return {}
    try:
        with storage.open_input_stream(max(states, key=lambda info: info.base_name).path) as handle:
            trials = [json.loads(trial) for trial, _ in json.loads(handle.read())["trial_data"]]
    except (json.JSONDecodeError, FileNotFoundError):
        return {}
    found = {}
    for trial in trials:
        if trial["status"] != "TERMINATED":
            continue
        [folder_info] = [info for info in storage.get_file_info(pyarrow.fs.FileSelector(folder))
                         if info.base_name.startswith(f"run_trial_{trial['trial_id']}_")]
        with storage.open_input_stream(f"{folder_info.path}/result.json") as handle:
            found[trial["trial_id"]] = handle.read().decode()
    return found


def wait_for(condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def resume(env: dict[str, str], name: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), "--resume", "--name", name,
                             "--storage-path", f"s3://{BUCKET}/searches"], cwd=log.parent, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def test_a_search_on_s3_killed_then_cut_off_from_its_storage_resumes_without_losing_or_repeating_a_trial(s3, tmp_path):
    """SIGKILL, then the storage gone mid-resume (one line, exit 74), and a resume that finishes once it is back;
    then best.py pulls the best model from S3. No trial retries (--max-failures 0): a retry only waits on the
    storage client's own retries before the trial fails."""
    env, gate = s3
    name = "killed"
    process = search(env, name, "--num-samples", "8", "--max-epochs", "4", "--grace-period", "2", "--max-failures", "0",
                     log=tmp_path / "first.log")
    wait_for(lambda: len(terminated_trials(env, name)) >= 3)
    process.kill()  # SIGKILL: no chance to save or upload anything
    process.wait(timeout=60)
    before = terminated_trials(env, name)
    assert len(before) < 8, "the search finished before it could be killed"

    cut_off = resume(env, name, log=tmp_path / "cut-off.log")
    wait_for(lambda: len(terminated_trials(env, name)) > len(before) or cut_off.poll() is not None)
    before_cut = terminated_trials(env, name)
    gate.down()
    try:
        assert len(before_cut) < 8, "the resumed search finished before its storage could be cut off"
        assert cut_off.wait(timeout=600) == STORAGE_FAULT_STATUS, (tmp_path / "cut-off.log").read_text()[-3000:]
        output = (tmp_path / "cut-off.log").read_text()
        assert f"search stopped: cannot write to s3://{BUCKET}/searches: Could not connect to server" in output
        assert f"--resume --name {name} --storage-path s3://{BUCKET}/searches" in output
        assert "Traceback" not in output
    finally:
        gate.up()

    finished = resume(env, name, log=tmp_path / "resumed.log")
    finished.wait(timeout=900)
    output = (tmp_path / "resumed.log").read_text()
    assert finished.returncode == 0 and "8 trials (0 failed)" in output, output[-3000:]
    after = terminated_trials(env, name)
    assert len(after) == 8
    for trial, text in {**before, **before_cut}.items():  # finished trials were kept as they were, not run again
        assert after[trial] == text
    assert not list(tmp_path.glob("search.log")), "a cloud search's log went into the current folder"
    storage, folder = bucket(env), f"{BUCKET}/searches/{name}"
    assert storage.get_file_info(f"{folder}/search.log").type == pyarrow.fs.FileType.File
    for trial in after:  # superseded checkpoints were deleted once the search ended: a trial keeps its last
        [trial_folder] = [info.path for info in storage.get_file_info(pyarrow.fs.FileSelector(folder))
                          if info.base_name.startswith(f"run_trial_{trial}_")]
        kept = [info for info in storage.get_file_info(pyarrow.fs.FileSelector(trial_folder))
                if info.base_name.startswith("checkpoint_")]
        # a trial the saved state had finished keeps one; a resumed one may keep, beside it, later checkpoints
        # written before the kill that the state did not know of (its reported epochs name them)
        assert len(kept) == 1 if trial in before else len(kept) >= 1, kept

    out = tmp_path / "best"
    best = subprocess.run([sys.executable, str(REPO / "tune" / "best.py"), f"s3://{BUCKET}/searches/{name}",
                           "--no-retrain", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert best.returncode == 0, best.stdout[-3000:] + best.stderr[-3000:]
    with bucket(env).open_input_stream(f"{BUCKET}/searches/{name}/lrml_search.json") as handle:
        outcome = json.loads(handle.read())["outcome"]
    [lrml] = [row for row in json.loads((out / "evaluation.json").read_text()) if row["model"] == "lrml"]
    # the search's best checkpoint, pulled from S3, scores on validation what its trial reported: the same users'
    # float64 metrics as a mean and as a sum over their count, some 10^4 x 2^-53 apart at most
    assert lrml["trial"] == outcome["best_trial"]
    assert lrml["valid"]["sampled"]["ndcg@10"] == pytest.approx(outcome["best_valid"]["valid/sampled/ndcg@10"],
                                                                rel=1e-9)


def test_the_rungs_of_a_search_on_s3_are_saved_beside_it_and_read_back_by_a_resumed_scheduler(s3, monkeypatch):
    """Tune saves no scheduler: a resumed search on cloud storage must find the rungs where it left them."""
    env, _ = s3
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, env[name])
    location = f"s3://{BUCKET}/rungs/{SCHEDULER_STATE_FILE}"
    first = make_scheduler("asha", max_epochs=36, grace_period=4, state_file=location)
    first.set_search_properties(MONITOR, "max")
    for trial_id, value in (("a", 0.25), ("b", 0.5)):  # b's result within CLOUD_SAVE_SECONDS of a's: not saved yet
        trial = Trial("run_trial", trial_id=trial_id, stub=True)
        first.on_trial_add(None, trial)
        assert first.on_trial_result(None, trial, {"epoch": 4, "total_seconds": 4.0, MONITOR: value}) == \
            TrialScheduler.CONTINUE
    resumed = make_scheduler("asha", max_epochs=36, grace_period=4, state_file=location)
    resumed.set_search_properties(MONITOR, "max")
    decisions = []
    for trial_id, value in (("c", 0.2), ("d", 0.3)):
        trial = Trial("run_trial", trial_id=trial_id, stub=True)
        resumed.on_trial_add(None, trial)
        decisions.append(resumed.on_trial_result(None, trial, {"epoch": 1, "total_seconds": 4.0, MONITOR: value}))
    # the unit read back (1 s an epoch: a's), so c and d, costly, meet the rung after their first epoch; the rung
    # read back as {a: 0.25}: ASHA's cut-off, the 2/3 quantile, stops c (0.2 < 0.25) and, with c in the rung, lets
    # d through (0.3 > 0.233); empty rungs would let c through, b's 0.5 saved would stop d (0.333)
    assert decisions == [TrialScheduler.STOP, TrialScheduler.CONTINUE]


def test_a_resume_or_best_py_that_cannot_reach_the_storage_says_so_in_one_line(tmp_path):
    """No server at the endpoint (a port nothing listens on): the record cannot be read, and both commands say
    which file and why, with no traceback."""
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    expected = (f"cannot read s3://{BUCKET}/searches/gone/lrml_search.json: Could not connect to server "
                "(NETWORK_CONNECTION)")
    commands = (["search.py", "--resume", "--name", "gone", "--storage-path", f"s3://{BUCKET}/searches"],
                ["best.py", f"s3://{BUCKET}/searches/gone"])
    running = [subprocess.Popen([sys.executable, str(REPO / "tune" / command[0]), *command[1:]], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command in commands]
    for command, process in zip(commands, running):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2 and stderr.strip() == f"{command[0]}: error: {expected}", stderr[-3000:]
