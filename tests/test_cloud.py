"""A search on cloud storage: an S3 API served on loopback by moto, reached as a user reaches S3 (the endpoint and
keys in the environment), killed and resumed, and its best checkpoint pulled by ``tune/best.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs
import pytest
from conftest import ML_100K, REPO, free_port, require

pytestmark = pytest.mark.ray  # starts Ray: left out by `pytest -m "not ray"`

BUCKET = "lrml-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> dict[str, str]:
    """moto's S3 server on a free loopback port, a bucket on it; the environment that reaches it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        client = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                                         region="us-east-1", allow_bucket_creation=True)
        deadline = time.time() + 60
        while True:
            try:
                client.create_dir(BUCKET)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "moto's server did not start"
                time.sleep(0.3)
        yield env
    finally:
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


def test_a_killed_search_on_s3_resumes_without_losing_or_repeating_a_trial_and_best_pulls_its_model(s3, tmp_path):
    name = "killed"
    process = search(s3, name, "--num-samples", "8", "--max-epochs", "4", "--grace-period", "2",
                     log=tmp_path / "first.log")
    wait_for(lambda: len(terminated_trials(s3, name)) >= 3)
    process.kill()  # SIGKILL: no chance to save or upload anything
    process.wait(timeout=60)
    before = terminated_trials(s3, name)
    assert len(before) < 8, "the search finished before it could be killed"

    resumed = subprocess.run([sys.executable, str(REPO / "tune" / "search.py"), "--resume", "--name", name,
                              "--storage-path", f"s3://{BUCKET}/searches"], cwd=tmp_path, env=s3,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0 and "8 trials (0 failed)" in resumed.stdout, \
        resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = terminated_trials(s3, name)
    assert len(after) == 8
    for trial, text in before.items():  # finished trials were kept as they were, not run again
        assert after[trial] == text
    assert not list(tmp_path.glob("search.log")), "a cloud search's log went into the current folder"
    storage, folder = bucket(s3), f"{BUCKET}/searches/{name}"
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
                           "--no-retrain", "--out", str(out)], cwd=tmp_path, env=s3, capture_output=True, text=True,
                          timeout=900)
    assert best.returncode == 0, best.stdout[-3000:] + best.stderr[-3000:]
    with bucket(s3).open_input_stream(f"{BUCKET}/searches/{name}/lrml_search.json") as handle:
        outcome = json.loads(handle.read())["outcome"]
    [lrml] = [row for row in json.loads((out / "evaluation.json").read_text()) if row["model"] == "lrml"]
    # the search's best checkpoint, pulled from S3, scores on validation what its trial reported: the same users'
    # float64 metrics as a mean and as a sum over their count, some 10^4 x 2^-53 apart at most
    assert lrml["trial"] == outcome["best_trial"]
    assert lrml["valid"]["sampled"]["ndcg@10"] == pytest.approx(outcome["best_valid"]["valid/sampled/ndcg@10"],
                                                                rel=1e-9)
