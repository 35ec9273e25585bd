"""SearchSettings, the one way into a search: its flags generated from its fields, its checks, the command line a
settings object prints, the record a search writes, and the baselines' settings derived from LRML's."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, fields, replace

import pytest

from lrml import train
from lrml.baselines import BPRConfig, EASEConfig
from lrml.model import LRMLConfig
from lrml.options import arguments, from_flags, option, parser_for
from lrml.train import TrainConfig, build_model, defaults
from lrml_tune.comparison.baseline_searches import baseline_settings, find_baseline
from lrml_tune.sweep import SearchOutcome, SearchRecord, SearchSettings
from lrml_tune.sweep.driver import command_parser, parse_command_line
from lrml_tune.sweep.record import RECORD_FILE, RECORD_VERSION
from lrml_tune.sweep.space import Param, default_space_file, load_space

OUTCOME = SearchOutcome(trials=3, errors=0, epochs_trained=9, wall_seconds=20.0, search_started_at=1.5e9,
                        search_seconds=10.0, training_seconds=15.0, concurrency=2, best_trial="abc",
                        best_config={"lr": 0.001}, best_epoch=3, best_trial_epochs=3,
                        best_valid={"valid/sampled/ndcg@10": 0.4}, epochs_this_run=9, cpu_seconds=12.0, cpus=2.0)


def read_back(settings: SearchSettings) -> SearchSettings:
    """The settings the printed command line makes, parsed as tune/search.py parses its own."""
    prog, script, *argv = shlex.split(settings.command_line())
    assert (prog, script) == ("python", "tune/search.py")
    found, resume = parse_command_line(argv)
    assert not resume
    return found


def test_every_setting_round_trips_through_the_printed_command_line(tmp_path):
    """A value away from its default in every field, quoting and exact floats included, reads back equal."""
    space_file = tmp_path / "a space.json"
    space_file.write_text(json.dumps({"lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}))
    changed = SearchSettings(
        model="cml", num_samples=7, dataset="ml-100k", data_dir=str(tmp_path / "ml 100k"), name="it's mine",
        storage_path=str(tmp_path / "runs"), seed=3, max_epochs=30, patience=4, metric="full", report_both=True,
        time_budget="90s", searcher="random", scheduler="hyperband", grace_period=2, space_file=str(space_file),
        workers_per_trial=2, sync_every=4,
        cpus_per_worker=0.3, fixed_threads=True, gpus_per_worker=0.125, concurrency=5, max_failures=0, worker_start_timeout=45.5,
        address="127.0.0.2:6379", node_ip_address="127.0.0.2", mlflow="http://127.0.0.1:5000", wandb=True)
    defaults_of = SearchSettings()
    assert all(getattr(changed, item.name) != getattr(defaults_of, item.name) for item in fields(SearchSettings))
    assert read_back(changed) == changed
    # the default store of --mlflow is the flag alone; every other default is left out of the command
    assert read_back(replace(changed, mlflow="")) == replace(changed, mlflow="")
    assert "--mlflow" in shlex.split(replace(changed, mlflow="").command_line())
    plain = SearchSettings(storage_path=str(tmp_path))
    assert plain.arguments() == ["--name", "ml-latest-small-lrml", "--storage-path", str(tmp_path)]
    assert read_back(plain) == plain


def test_a_new_setting_is_one_field():
    """A field with its default, help and bound is a flag of the generated parser, is checked, and is printed."""
    @dataclass(frozen=True)
    class WithBudget(SearchSettings):
        time_budget_minutes: float | None = option(None, "stop starting trials after this many minutes", above=0)

    parser = parser_for(WithBudget)
    assert "--time-budget-minutes TIME_BUDGET_MINUTES" in parser.format_help()
    assert "stop starting trials after this many minutes" in parser.format_help()
    made = from_flags(WithBudget, parser.parse_args(["--time-budget-minutes", "7.5", "--storage-path", "/runs"]))
    assert made.time_budget_minutes == 7.5 and made.storage_path == "/runs"
    assert arguments(made)[-2:] == ["--time-budget-minutes", "7.5"]
    assert from_flags(WithBudget, parser.parse_args(arguments(made))) == made
    with pytest.raises(ValueError, match="^--time-budget-minutes must be above 0; got 0$"):
        WithBudget(time_budget_minutes=0)


@pytest.mark.parametrize("values, message", [
    ({"num_samples": 0}, "--num-samples must be at least 1; got 0"),
    ({"concurrency": 0}, "--concurrency must be at least 1; got 0"),
    ({"cpus_per_worker": 0}, "--cpus-per-worker must be above 0; got 0"),
    ({"gpus_per_worker": -1}, "--gpus-per-worker must be at least 0; got -1"),
    ({"max_failures": -1}, "--max-failures must be at least 0; got -1"),
    ({"model": "ease"}, "--model 'ease': expected one of lrml, cml, bpr"),
    ({"searcher": "grid"}, "--searcher 'grid': expected one of tpe, random"),
    ({"max_epochs": 3, "grace_period": 5}, "--grace-period 5 is longer than --max-epochs 3"),
    ({"dataset": "synthetic-ml-1m", "data_dir": "/data"}, "--data-dir /data: synthetic-ml-1m is generated"),
    ({"dataset": "ml-7m"}, "ml-7m"),
])
def test_settings_no_search_can_run_with_are_refused_naming_the_flag(values, message):
    with pytest.raises(ValueError, match=message):
        SearchSettings(**values)


def test_the_grace_period_follows_a_short_budget_however_the_settings_are_made():
    grace = {epochs: SearchSettings(max_epochs=epochs).grace_epochs for epochs in (1, 3, 8, 20)}
    assert grace == {1: 1, 3: 3, 8: 8, 20: 8}
    assert parse_command_line(["--max-epochs", "3"])[0].grace_epochs == 3
    assert replace(SearchSettings(), max_epochs=2).grace_epochs == 2  # no earlier default left behind
    assert SearchSettings(max_epochs=3, grace_period=2).grace_epochs == 2


def test_each_default_is_written_once():
    """The command line takes its defaults from SearchSettings, which takes the budget from TrainConfig; the
    trainer's defaults build exactly the models their configs describe by default."""
    settings, _ = parse_command_line(["--storage-path", "/runs"])
    assert settings == SearchSettings(storage_path="/runs")
    assert "(default 100)" in command_parser().format_help()  # --max-epochs, from TrainConfig
    assert (settings.max_epochs, settings.patience) == (TrainConfig.max_epochs, TrainConfig.patience)
    trainer_cli = train.parse_args([])
    assert all(getattr(trainer_cli, name) is None for name in asdict(TrainConfig()) if name != "model")  # no second default
    assert build_model(defaults("lrml"), 10, 12).config == LRMLConfig(10, 12)
    assert build_model(defaults("cml"), 10, 12).config == LRMLConfig(10, 12, use_memory=False)
    assert build_model(defaults("bpr"), 10, 12).config == BPRConfig(10, 12)
    assert build_model(defaults("ease"), 10, 12).config == EASEConfig(10, 12)


def test_the_search_record_reads_back_as_the_same_types(tmp_path):
    settings = SearchSettings(name="e", storage_path=str(tmp_path), concurrency=2, data_dir="/data")
    record = SearchRecord(settings, load_space(default_space_file("lrml")), "/prepared", "fingerprint", OUTCOME)
    record.write()
    found = SearchRecord.read(str(tmp_path / "e"))
    assert found == record and isinstance(found.space["embedding_dim"], Param)
    assert found.space["embedding_dim"].values == (32, 64, 100, 128, 256, 512)
    assert found.space["lr[adagrad]"].when == {"optimizer": ("adagrad",)} and found.outcome.still_improving
    assert found.outcome.training_share == pytest.approx(15.0 / (10.0 * 2))
    assert found.outcome.cpu_use == pytest.approx(12.0 / (10.0 * 2))
    assert found.outcome.time_spent() == ("3 trials (0 failed), 9 epochs; 20s (10s searching), the 2 trial slot(s) "
                                          "75% inside training epochs, the trials' CPU use 60% of 2 CPUs")
    # after a resume the times are the last run's alone, and the sentence says so
    assert replace(OUTCOME, epochs_this_run=4).time_spent().startswith(
        "3 trials (0 failed), 9 epochs (4 in the last run, after a resume); 20s (10s searching), the last run's 2 ")
    raw = json.loads((tmp_path / "e" / RECORD_FILE).read_text())
    (tmp_path / "e" / RECORD_FILE).write_text(json.dumps({**raw, "version": 1}))
    with pytest.raises(ValueError, match=f"record version 1, this code reads {RECORD_VERSION}"):
        SearchRecord.read(str(tmp_path / "e"))


def test_baseline_searches_are_found_beside_the_lrml_search_only_with_the_same_budget(tmp_path):
    space = load_space(default_space_file("lrml"))

    def record(name: str, model: str, finished: bool = True, **budget) -> SearchRecord:
        settings = SearchSettings(name=name, storage_path=str(tmp_path), model=model,
                                  num_samples=budget.get("num_samples", 8), seed=budget.get("seed", 0))
        found = SearchRecord(settings, space, "/prepared", budget.get("fingerprint", "same"),
                             OUTCOME if finished else None)
        found.write()
        return found

    lrml = record("small-lrml", "lrml")
    assert find_baseline(str(tmp_path / "small-lrml"), lrml, "cml") is None
    record("other-cml", "cml", num_samples=16)  # another budget
    record("seeded-cml", "cml", seed=1)  # another seed
    record("elsewhere-cml", "cml", fingerprint="other")  # another dataset
    record("unfinished-cml", "cml", finished=False)
    assert find_baseline(str(tmp_path / "small-lrml"), lrml, "cml") is None
    record("any-name-cml", "cml")
    assert find_baseline(str(tmp_path / "small-lrml"), lrml, "cml") == str(tmp_path / "any-name-cml")
    record("small-cml", "cml")  # the conventional name wins over another match
    assert find_baseline(str(tmp_path / "small-lrml"), lrml, "cml") == str(tmp_path / "small-cml")
    assert find_baseline(str(tmp_path / "small-lrml"), lrml, "bpr") is None


def test_a_baseline_search_gets_every_setting_of_the_lrml_search_but_its_model_name_and_space(tmp_path):
    space_file = tmp_path / "lrml-space.json"
    space_file.write_text(json.dumps({"memory_size": {"type": "choice", "values": [5, 20]}}))
    lrml = SearchSettings(name="small-lrml-s1", storage_path=str(tmp_path / "runs"), seed=1, patience=7,
                          max_epochs=30, worker_start_timeout=90, mlflow="http://127.0.0.1:5000", wandb=True,
                          concurrency=3, space_file=str(space_file))
    record = SearchRecord(lrml, load_space(space_file), "/prepared", "same")
    cml = baseline_settings(lrml.experiment, record, "cml")
    differing = {item.name for item in fields(SearchSettings) if getattr(cml, item.name) != getattr(lrml, item.name)}
    assert differing == {"model", "name", "space_file"}
    assert (cml.name, cml.model, cml.space_path) == ("small-cml-s1", "cml", default_space_file("cml"))
    assert read_back(cml) == cml  # the command best.py prints when the baseline is missing makes these settings
