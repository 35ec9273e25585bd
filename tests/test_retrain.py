"""Retraining with a store of finished runs: a run is trained once per configuration, dataset and code."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lrml.train import TrainConfig
from lrml_tune.comparison.retrain import RunStore, retrain

# two epochs of a narrow LRML: enough to give real metrics, a few seconds each
TINY = TrainConfig(embedding_dim=8, memory_size=2, max_epochs=2, patience=2, batch_size=4096, seed=1)


def without_time(final: dict) -> dict:
    return {key: value for key, value in final.items() if key != "seconds"}


@pytest.fixture(scope="module")
def first_runs(small_dataset, tmp_path_factory):
    """Two configurations trained once into a fresh store."""
    store = RunStore(tmp_path_factory.mktemp("runs"))
    configs = [TINY, replace(TINY, seed=2)]
    return store, configs, retrain(configs, str(small_dataset.path), "tiny", store)


def test_a_run_is_stored_once_and_read_back_instead_of_trained(first_runs, small_dataset, capsys):
    store, configs, finals = first_runs
    assert sorted(path.name.split("-")[1] for path in store.folder.glob("*.json")) == ["seed1", "seed2"]
    # mark the stored run: reading it back, not training again, is what returns the mark
    path = store.path(configs[0], small_dataset.fingerprint)
    stored = json.loads(path.read_text())
    stored["final"]["best_epoch"] = -7
    path.write_text(json.dumps(stored))
    again = retrain(configs, str(small_dataset.path), "tiny", store)
    assert again[0]["best_epoch"] == -7 and again[1] == finals[1]
    assert "2/2 already trained" in capsys.readouterr().out


def test_a_fresh_run_of_a_stored_configuration_gives_the_stored_numbers(first_runs, small_dataset):
    """Reusing a run changes no number: training is deterministic for a configuration and seed."""
    store, configs, finals = first_runs
    (fresh,) = retrain([configs[0]], str(small_dataset.path), "tiny")
    assert without_time(fresh) == without_time(finals[0])
    assert 0 < fresh["valid"]["sampled"]["ndcg@10"] < 1


def test_another_setting_or_an_unreadable_file_is_trained_again(first_runs, small_dataset, tmp_path):
    store, configs, _ = first_runs
    other = replace(configs[0], margin=configs[0].margin * 2)
    assert store.path(other, small_dataset.fingerprint) != store.path(configs[0], small_dataset.fingerprint)
    assert store.path(configs[0], "another dataset") != store.path(configs[0], small_dataset.fingerprint)
    cut = RunStore(tmp_path)
    cut.path(configs[0], small_dataset.fingerprint).write_text('{"final": {"best_ep')  # cut short
    assert cut.get(configs[0], small_dataset.fingerprint) is None
    (trained,) = retrain([configs[0]], str(small_dataset.path), "tiny", cut)
    assert cut.get(configs[0], small_dataset.fingerprint) == trained
    assert not list(tmp_path.glob("*.partial"))
