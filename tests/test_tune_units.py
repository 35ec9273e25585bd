"""The search's pieces that need no running Ray: space files, starting points, strategies, resources, state files,
storage faults, statistics."""
from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from lrml.train import defaults
from lrml_tune.comparison.stats import bootstrap_ci, paired_randomization_test
from lrml_tune.sweep import SearchSettings
from lrml_tune.sweep.cores import shares
from lrml_tune.sweep.faults import RESERVE_BYTES_PER_TRIAL, Reserve, StorageFault, storage_fault
from lrml_tune.sweep.pruning import CheckpointPruner
from lrml_tune.sweep.resources import plan_resources
from lrml_tune.sweep.space import at_edges, default_space_file, load_space, starting_points, suggest
from lrml_tune.sweep.state import STATE_VERSION, VERSION_KEY, read_state, write_state
from lrml_tune.sweep.stopping import make_scheduler
from lrml_tune.sweep.study import STUDY_FILE, make_sampler, repair_journal


def test_every_model_space_loads_and_starts_from_the_defaults():
    for model in ("lrml", "cml", "bpr"):
        space = load_space(default_space_file(model))
        points = starting_points(model, space)
        # the defaults use Adam and their own loss: the parameters that apply to them, and no others
        assert points and all("lr[adam]" in point and "lr[adagrad]" not in point and "temperature" not in point
                              for point in points)
    lrml = starting_points("lrml", load_space(default_space_file("lrml")))
    assert [point["reg_weight"] for point in lrml] == [0.01, 0.1]  # the defaults, then the seed sketch's
    assert lrml[0]["margin"] == 0.2 and lrml[0]["loss"] == "hinge" and lrml[0]["num_negatives"] == 1
    assert "memory_size" not in load_space(default_space_file("bpr"))


def test_conditional_parameters_are_asked_only_where_they_apply():
    """Random configurations of LRML's space: a margin only for the hinge losses, a temperature only for the
    softmax, and each optimizer's learning rate from its own range."""
    space = load_space(default_space_file("lrml"))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [suggest(study.ask(), space) for _ in range(200)]
    assert {config["loss"] for config in configs} == {"hinge", "warp", "softmax"}
    for config in configs:
        assert ("margin" in config) == (config["loss"] != "softmax") and ("temperature" in config) == ("margin" not in config)
        low, high = {"adam": (1e-4, 0.05), "adagrad": (1e-3, 0.5)}[config["optimizer"]]
        assert low <= config["lr"] <= high
    trial = study.trials[0]
    assert ("lr[adam]" in trial.params) == (trial.params["optimizer"] == "adam")


def test_tpe_learns_over_the_conditional_space():
    """Multivariate TPE, grouped, proposes every parameter where it applies once it models the trials: a study of
    an objective that rewards the softmax with a low temperature ends up proposing it."""
    space = load_space(default_space_file("cml"))
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", seed=0))
    for _ in range(40):
        trial = study.ask()
        config = suggest(trial, space)
        study.tell(trial, (config["loss"] == "softmax") * (1.0 - config.get("temperature", 1.0)))
    late = [trial.params for trial in study.trials[-10:]]
    assert sum(params["loss"] == "softmax" for params in late) >= 6


def test_values_at_the_ends_of_a_range_are_named():
    space = load_space(default_space_file("lrml"))
    found = at_edges(space, {"embedding_dim": 512, "memory_size": 20, "loss": "softmax", "temperature": 0.0021,
                             "optimizer": "adagrad", "lr": 0.2, "reg_weight": 0.001, "batch_size": 1024})
    assert found == ["embedding_dim=512 is the highest the space allows [32, 64, 100, 128, 256, 512]",
                     "temperature=0.0021 is the lowest the space allows [0.002, 1] when loss is softmax"]
    # one memory slot or one negative is the least there can be: nothing wider to search below it
    assert at_edges(space, {"memory_size": 1, "num_negatives": 1, "embedding_dim": 32}) == [
        "embedding_dim=32 is the lowest the space allows [32, 64, 100, 128, 256, 512]"]


@pytest.mark.parametrize("text, message", [
    ('{"lr": {"type": "loguniform", "low": 0.1,}}', r"space.json, line 1: not valid JSON"),
    ('{"learning_rate": {"type": "uniform", "low": 0, "high": 1}}', r"'learning_rate' is not a hyperparameter"),
    ('{"lr": {"type": "normal", "low": 0, "high": 1}}', r"'lr' needs a 'type' among choice, loguniform"),
    ('{"lr": {"type": "loguniform", "low": 0, "high": 1}}', r"'lr' is loguniform and needs 'low' > 0"),
    ('{"lr": {"type": "uniform", "low": 1, "high": 0.5}}', r"'lr' needs numbers 'low' < 'high'"),
    ('{"batch_size": {"type": "choice", "values": []}}', r"'batch_size' is a choice and needs a non-empty list"),
    ('{"seed": {"type": "choice", "values": [1, 2]}}', r"'seed' is not a hyperparameter"),
    ('{"_comment": "nothing else"}', r"no hyperparameter to search"),
    ('{"margin": {"type": "uniform", "low": 0, "high": 1, "when": {"loss": ["hinge"]}}}',
     r"'margin' depends on 'loss', which must be an unconditional choice listed before it"),
    ('{"loss": {"type": "choice", "values": ["hinge"]}, "margin": {"type": "uniform", "low": 0, "high": 1, '
     '"when": {"loss": ["softmax"]}}}', r"'margin' applies when loss is \['softmax'\], which loss never is"),
    ('{"optimizer": {"type": "choice", "values": ["adam", "adagrad"]}, "lr": {"type": "loguniform", "by": '
     '"optimizer", "ranges": {"adam": [0.001, 0.01]}}}', r"'lr' needs 'ranges' with one \[low, high\] for each optimizer"),
])
def test_a_bad_space_file_names_the_file_and_the_entry(tmp_path, text, message):
    path = tmp_path / "space.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_space(path)


def test_a_starting_point_outside_the_space_is_skipped(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": {"type": "loguniform", "low": 0.01, "high": 0.1},
                                "reg_weight": {"type": "choice", "values": [0.01, 0.1]}}))
    assert starting_points("lrml", load_space(path)) == []  # both points have lr 0.001


def test_a_field_the_space_fixes_keeps_the_starting_points_with_its_one_value(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"memory_size": {"type": "choice", "values": [1]},
                                "reg_weight": {"type": "loguniform", "low": 1e-6, "high": 1.0}}))
    assert starting_points("lrml", load_space(path)) == [{"memory_size": 1, "reg_weight": defaults("lrml").reg_weight},
                                                         {"memory_size": 1, "reg_weight": 0.1}]
    path.write_text(json.dumps({"memory_size": {"type": "choice", "values": [5, 10]}}))
    assert starting_points("lrml", load_space(path)) == []  # the default's 20 slots are outside; nothing is fixed


def test_strategies():
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(make_scheduler("none", 20, 2), FIFOScheduler)
    asha, hyperband = make_scheduler("asha", 20, 2), make_scheduler("hyperband", 20, 2)
    assert isinstance(asha, AsyncHyperBandScheduler) and len(asha._brackets) == 1 and len(hyperband._brackets) == 3
    assert [rung for rung, _ in asha._brackets[0]._rungs][::-1] == [2, 6, 18]  # grace 2, reduction factor 3
    with pytest.raises(ValueError, match="searcher 'grid'"):
        make_sampler("grid", 0)


def test_the_rungs_count_seconds_trained_in_epochs_of_the_first_trial_to_reach_the_grace_period():
    """A trial whose epoch costs five of the defaults' meets the first rung (2 epochs' worth) after its first
    epoch; judged by epochs, it would pass it untested."""
    monitor = "valid/sampled/ndcg@10"
    asha = make_scheduler("asha", max_epochs=20, grace_period=2)
    asha.set_search_properties(monitor, "max")
    defaults_trial, costly, cheap = (Trial("run_trial", trial_id=name, stub=True) for name in ("a", "b", "c"))
    for trial in (defaults_trial, costly, cheap):
        asha.on_trial_add(None, trial)
    decide = asha.on_trial_result
    # before any trial has reached the grace period, the unit is unknown and nothing is stopped
    assert decide(None, costly, {"epoch": 1, "total_seconds": 5.0, monitor: 0.1}) == TrialScheduler.CONTINUE
    assert decide(None, defaults_trial, {"epoch": 1, "total_seconds": 1.25, monitor: 0.2}) == TrialScheduler.CONTINUE
    assert decide(None, defaults_trial, {"epoch": 2, "total_seconds": 2.0, monitor: 0.3}) == TrialScheduler.CONTINUE
    assert asha.epoch_seconds == 1.0  # its 2.0 s over 2 epochs; it entered the rung at 2 epochs' worth with 0.3
    # 1.5 s is under the rung's 2 epochs' worth: not judged, though below the cut-off
    assert decide(None, cheap, {"epoch": 3, "total_seconds": 1.5, monitor: 0.05}) == TrialScheduler.CONTINUE
    # 5 s after one epoch: judged at the rung against 0.3 (the 2/3 quantile of one value), and stopped
    assert decide(None, costly, {"epoch": 1, "total_seconds": 5.0, monitor: 0.25}) == TrialScheduler.STOP
    assert [sorted(recorded) for _, recorded in asha._brackets[0]._rungs][::-1] == [["a", "b"], [], []]


def test_resource_plan_fills_the_cluster():
    assert plan_resources({"CPU": 2.0}, workers=1, cpus_per_worker=1, gpus_per_worker=0).concurrency == 2
    assert plan_resources({"CPU": 16.0, "GPU": 1.0}, workers=2, cpus_per_worker=2, gpus_per_worker=0.25).concurrency == 2
    with pytest.raises(ValueError, match="the cluster has 2 CPU and 0 GPU now .* pass --concurrency"):
        plan_resources({"CPU": 2.0}, workers=2, cpus_per_worker=1, gpus_per_worker=1)
    scaling = plan_resources({"CPU": 4.0}, workers=2, cpus_per_worker=2, gpus_per_worker=1, concurrency=4)
    assert (scaling.concurrency, scaling.fits_now) == (4, 0)  # a cluster that autoscales: the user's concurrency


def test_the_last_trials_share_their_nodes_cpus_and_nothing_is_lent_while_a_node_is_unknown():
    two_cpus = {"10.0.0.1": 2.0}
    assert shares({"a": "10.0.0.1"}, two_cpus, own=1) == {"a": 2}
    assert shares({"a": "10.0.0.1", "b": "10.0.0.1"}, two_cpus, own=1) == {}  # one each: their own
    assert shares({"a": "10.0.0.1", "b": None}, two_cpus, own=1) == {}  # b holds a CPU on a node not yet known
    # each node split between the trials running there; a share no larger than a trial's own is not lent
    nodes = {"10.0.0.1": 4.0, "10.0.0.2": 5.0}
    assert shares({"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.2"}, nodes, own=1) == {"a": 4, "b": 2, "c": 2}
    assert shares({"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.2"}, nodes, own=2) == {"a": 4}


def test_only_one_worker_trials_on_cpus_are_lent_cores_and_fixed_threads_turns_it_off(tmp_path):
    assert SearchSettings(storage_path=str(tmp_path)).lends_cores
    for other in ({"fixed_threads": True}, {"workers_per_trial": 2}, {"gpus_per_worker": 1.0}):
        assert not SearchSettings(storage_path=str(tmp_path), **other).lends_cores, other
    assert SearchSettings(storage_path=str(tmp_path), fixed_threads=True).arguments()[-1] == "--fixed-threads"


def test_bootstrap_interval_and_paired_test_against_known_answers():
    constant = [0.5] * 40
    assert bootstrap_ci(constant) == (0.5, 0.5)
    zero_one = [0.0, 1.0] * 200  # mean 0.5, standard error 0.025: the 95% interval is about 0.5 +- 0.049
    low, high = bootstrap_ci(zero_one)
    assert low == pytest.approx(0.451, abs=0.01) and high == pytest.approx(0.549, abs=0.01)
    # three users, each 1 better: of the 8 equally likely sign patterns, 2 are as extreme -> p = 1/4
    assert paired_randomization_test([1, 1, 1], [0, 0, 0]) == pytest.approx(0.25, abs=0.015)
    assert paired_randomization_test([0.3] * 50, [0.3] * 50) == 1.0  # no difference at all
    assert paired_randomization_test([1.0] * 30, [0.0] * 30) < 0.001


def test_resampling_counts_of_values_matches_resampling_users():
    """Drawing how many users take each value gives the interval and p-value of drawing the users themselves."""
    rng = np.random.default_rng(1)
    ndcg = np.where(rng.random(600) < 0.4, 1 / np.log2(rng.integers(0, 10, 600) + 2.0), 0.0)
    means = ndcg[rng.integers(0, 600, (10_000, 600))].mean(axis=1)
    assert bootstrap_ci(ndcg) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=0.004)
    other = np.where(rng.random(600) < 0.45, 1 / np.log2(rng.integers(0, 10, 600) + 2.0), 0.0)
    differences = ndcg - other
    flipped = np.abs((rng.choice((-1.0, 1.0), (10_000, 600)) * differences).mean(axis=1))
    expected = ((flipped >= abs(differences.mean()) - 1e-12).sum() + 1) / 10_001
    assert paired_randomization_test(ndcg, other) == pytest.approx(expected, abs=0.01)


NEWLINE = b"\n"


def journal_of_four_trials(folder) -> Path:
    """A real study journal: three finished trials and a fourth asked for."""
    path = folder / STUDY_FILE
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    for _ in range(3):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))
    study.ask().suggest_float("x", 0, 1)
    return path


def test_a_journal_cut_mid_record_is_repaired_and_resumes(tmp_path):
    path = journal_of_four_trials(tmp_path)
    whole = path.read_bytes()
    cut = whole[:-30]  # a write that failed part-way, as on a full disk
    path.write_bytes(cut)
    unfinished = len(cut) - cut.rfind(NEWLINE) - 1
    assert repair_journal(path) == f"{path}: dropped the unfinished record at its end ({unfinished} bytes), as a " \
                                   "failed write left it"
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [trial.state for trial in study.trials][:3] == [optuna.trial.TrialState.COMPLETE] * 3
    trial = study.ask()  # Optuna's own replay failed here before the repair
    study.tell(trial, trial.suggest_float("x", 0, 1))
    assert repair_journal(path) is None  # nothing left to repair


def test_a_journal_damaged_before_its_end_is_refused(tmp_path):
    path = journal_of_four_trials(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [lines[2][:10] + b"\n"] + lines[3:]))
    with pytest.raises(ValueError, match=rf"{path.name}, line 3: a damaged record before the journal's end"):
        repair_journal(path)


def test_a_state_file_cut_short_or_of_another_version_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "scheduler-state.pickle")
    write_state(path, {"rungs": [4, 12, 36]})
    assert read_state(path) == {"rungs": [4, 12, 36]} and not Path(f"{path}.part").exists()
    whole = Path(path).read_bytes()
    Path(path).write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"scheduler-state.pickle: unreadable \(\w+\): cut short, or written by another"):
        read_state(path)
    Path(path).write_bytes(pickle.dumps({"rungs": [], VERSION_KEY: 0}))
    with pytest.raises(ValueError, match=rf"scheduler-state.pickle: state version 0, this code reads {STATE_VERSION};"):
        read_state(path)


def test_storage_faults_are_recognised_from_the_error_or_its_text():
    wrapped = RuntimeError("the trial failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/mnt/runs/e/run_1/result.json")
    assert storage_fault(wrapped, "/mnt/runs") == StorageFault("/mnt/runs/e/run_1/result.json", "No space left on device")
    remote = "ray.exceptions.RayTaskError(OSError): ...\nOSError: [Errno 30] Read-only file system: '/mnt/runs/e/ckpt'"
    assert storage_fault(remote, "/mnt/runs") == StorageFault("/mnt/runs/e/ckpt", "Read-only file system")
    assert storage_fault("OSError: [Errno 28] No space left on device", "/mnt/runs").path == "/mnt/runs"
    assert storage_fault(OSError(errno.ENOENT, "No such file or directory", "/data"), "/mnt/runs") is None
    assert storage_fault("RuntimeError: diverged", "/mnt/runs") is None
    assert storage_fault("OSError: Error writing bytes to file. Detail: [errno 28] No space left on device",
                         "/mnt/runs") == StorageFault("/mnt/runs", "No space left on device")  # pyarrow's text
    assert storage_fault("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device",
                         "/mnt/runs") == StorageFault("/mnt/runs", "No space left on device")  # as a trial's error


def test_the_reserve_holds_its_space_and_keeps_the_fault_it_was_given_back_for(tmp_path):
    reserve = Reserve(str(tmp_path / "search"), trials=1000)
    reserve.hold()
    assert reserve.path.stat().st_size == 1000 * RESERVE_BYTES_PER_TRIAL and reserve.fault() is None
    fault = StorageFault(str(tmp_path), "No space left on device")
    reserve.give_back(fault)
    assert reserve.path.stat().st_size < 1000 and reserve.fault() == fault
    assert reserve.drop() == fault and not reserve.path.exists()
    assert Reserve("s3://bucket/search", trials=8).fault() is None  # nothing is held on a cloud store


def test_superseded_checkpoints_go_only_once_no_saved_state_can_name_them(tmp_path):
    folders = [tmp_path / f"checkpoint_{index:06d}" for index in range(4)]
    for folder in folders:
        folder.mkdir()
    trial = SimpleNamespace(trial_id="t1")
    waiting = CheckpointPruner(lag=3600.0)  # no checkpoint is an hour old: every one may still be named
    for folder in folders:
        waiting.on_checkpoint(0, [], trial, tune.Checkpoint.from_directory(str(folder)))
    assert all(folder.exists() for folder in folders)
    settled = CheckpointPruner(lag=0.0)  # each checkpoint settles at once: only the newest stays
    for folder in folders:
        settled.on_checkpoint(0, [], trial, tune.Checkpoint.from_directory(str(folder)))
    assert [folder.exists() for folder in folders] == [False, False, False, True]
