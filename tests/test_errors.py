"""A user's mistake gets one line naming the value, file or line, a non-zero exit and no traceback,
before any Ray starts; ``--debug`` shows the traceback. The commands' ``main`` runs in this process
(fast), and once as the script a user runs."""
from __future__ import annotations

import subprocess
import sys

import pytest
import ray
from conftest import REPO

from lrml import train
from lrml_tune import comparison, sweep
from lrml_tune.sweep import SearchRecord, SearchSettings

TUNE = REPO / "tune"


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120, cwd=REPO)


def refused(main, argv: list[str], capsys) -> str:
    """The one line ``main(argv)`` wrote to standard error, having returned status 2."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def bad_space(tmp_path):
    path = tmp_path / "space.json"
    path.write_text('{\n  "lr": {"type": "loguniform", "low": 0.001, "high": 0.01},\n}\n')
    return str(path)


def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return str(path)


SEARCH_MISTAKES = [
    (["--num-samples", "0"], "--num-samples must be at least 1; got 0"),
    (["--max-epochs", "-3"], "--max-epochs must be at least 1; got -3"),
    (["--grace-period", "5", "--max-epochs", "3"], "--grace-period 5 is longer than --max-epochs 3"),
    (["--workers-per-trial", "64"], "one trial needs 64 x 1 CPU and 64 x 0 GPU; this machine has"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker must be above 0"),
    (["--dataset", "ml-7m"], "unknown dataset 'ml-7m'"),
    (["--data-dir", "/no/such/ml-100k"], "--data-dir /no/such/ml-100k: no such file or folder"),
    (["--space", "{bad_space}"], "space.json, line 3: not valid JSON"),
    (["--space", "/no/such/space.json"], "/no/such/space.json: no such space file"),
    (["--storage-path", "{a_file}/runs"], "--storage-path: cannot write to"),
    (["--resume", "--name", "never-ran", "--storage-path", "{tmp}"], "never-ran: no lrml_search.json"),
    (["--name", "taken", "--storage-path", "{tmp}"], "taken already holds a search: pass --resume to continue it"),
    (["--patience", "0"], "--patience must be at least 1; got 0"),
    (["--mlflow", "http://127.0.0.1:9"], "--mlflow http://127.0.0.1:9: no tracking server answers there"),
]


@pytest.mark.parametrize("args, message", SEARCH_MISTAKES, ids=[" ".join(a) for a, _ in SEARCH_MISTAKES])
def test_search_refuses_a_mistake_in_one_line_before_ray_starts(tmp_path, args, message, capsys):
    values = {"bad_space": bad_space(tmp_path), "a_file": a_file(tmp_path), "tmp": str(tmp_path)}
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "lrml_search.json").write_text("{}")  # a search made here before
    args = [arg.format(**values) for arg in args]
    if "--storage-path" not in args:
        args += ["--storage-path", str(tmp_path / "runs")]
    line = refused(sweep.main, args, capsys)
    assert line.startswith("search.py: error: ") and message in line
    assert not ray.is_initialized()


def test_a_search_whose_data_cannot_be_read_leaves_no_experiment_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LRML_DATA_HOME", str(tmp_path / "home"))  # not the session's, where ml-latest-small may be ready
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,two,4.0,964981247\n")
    line = refused(sweep.main, ["--data-dir", str(folder), "--name", "unread", "--storage-path", str(tmp_path / "runs")],
                   capsys)
    assert "ratings.csv, line 3" in line
    assert not (tmp_path / "runs" / "unread").exists() and not ray.is_initialized()


def test_the_script_refuses_in_one_line_and_debug_shows_the_traceback(tmp_path):
    done = run(str(TUNE / "search.py"), "--num-samples", "0", "--storage-path", str(tmp_path))
    assert done.returncode == 2 and done.stderr == "search.py: error: --num-samples must be at least 1; got 0\n"
    debug = run(str(TUNE / "search.py"), "--num-samples", "0", "--storage-path", str(tmp_path), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_best_refuses_what_is_not_a_search(tmp_path, capsys):
    assert refused(comparison.main, [str(tmp_path / "nowhere")], capsys).startswith("best.py: error: no experiment at")
    (tmp_path / "empty").mkdir()
    assert "no lrml_search.json; not a search made by tune/search.py" in refused(comparison.main, [str(tmp_path / "empty")],
                                                                                  capsys)


def test_train_names_the_bad_value_and_the_bad_line(tmp_path, capsys):
    assert refused(train.main, ["--dataset", "ml-7m"], capsys).startswith("lrml.train: error: unknown dataset")
    assert "batch_size=0; it must be positive" in refused(train.main, ["--batch-size", "0"], capsys)
    assert "loss='bpr' is not offered for lrml; expected one of" in refused(train.main, ["--loss", "bpr"], capsys)
    assert "num_negatives=0; it must be positive" in refused(train.main, ["--num-negatives", "0"], capsys)
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,two,4.0,964981247\n")
    line = refused(train.main, ["--data-dir", str(folder), "--prepared-dir", str(tmp_path / "prepared")], capsys)
    assert "ratings.csv, line 3" in line


def test_best_on_a_search_synced_from_elsewhere_asks_for_its_data(tmp_path, capsys):
    settings = SearchSettings(name="synced", storage_path=str(tmp_path), data_dir="/on/the/cluster/ml-100k",
                              dataset="ml-100k")
    SearchRecord(settings, {}, "/on/the/cluster/prepared", "abc").write()
    line = refused(comparison.main, [str(tmp_path / "synced")], capsys)
    assert "read ml-100k from /on/the/cluster/ml-100k, which is not on this machine: pass --data-dir" in line
    SearchRecord(SearchSettings(name="other", storage_path=str(tmp_path)), {}, "/prepared", "abc").write()
    line = refused(comparison.main, [str(tmp_path / "other")], capsys)  # the bundled data, but not what the search saw
    assert "has fingerprint" in line and "the search ran on abc" in line
