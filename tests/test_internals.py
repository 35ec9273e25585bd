"""The names of Ray this code relies on that Ray does not promise to keep, checked against the installed
release, and the upper bounds that keep users on releases where they hold. docs/design.md, "Internals", lists
every such name with its test; the others sit beside the code that uses them (test_optim.py, test_prefetch.py,
test_faults.py)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import re

import pytest
import ray
import ray.air.constants
import ray.tune.constants
from ray.data import DataContext
from ray.train.v2._internal import constants as train_constants

from lrml_tune.sweep.driver import TRAIN_HEALTH_CHECK_ENV, TRAIN_START_TIMEOUT_ENV, TUNE_SETTINGS

PINNED = ("ray", "torch", "numba", "llvmlite", "optuna")  # each used beyond its public, stable names


def test_the_environment_settings_are_read_by_this_ray():
    assert train_constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR == TRAIN_HEALTH_CHECK_ENV
    assert train_constants.WORKER_GROUP_START_TIMEOUT_S_ENV_VAR == TRAIN_START_TIMEOUT_ENV
    known = ray.tune.constants.TUNE_ENV_VARS | ray.air.constants.AIR_ENV_VARS
    assert set(TUNE_SETTINGS) <= known


def test_ray_data_still_has_the_switch_the_trials_turn_off():
    assert "use_datasource_v2" in {item.name for item in dataclasses.fields(DataContext)}


@pytest.mark.ray
def test_a_local_ray_binds_the_node_address_it_is_given():
    """``ray.init(_node_ip_address=...)``, a private argument: a search's local Ray registers on loopback only."""
    ray.init(_node_ip_address="127.0.0.2", num_cpus=1, include_dashboard=False)
    try:
        assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == ["127.0.0.2"]
    finally:
        ray.shutdown()


@pytest.mark.parametrize("package", PINNED)
def test_each_package_used_beyond_its_stable_api_has_an_upper_bound(package):
    requirement = next(line for line in importlib.metadata.requires("lrml-tune")
                       if re.match(rf"{package}(\[|[<>=!~ ]|$)", line) and "extra ==" not in line)
    assert "<" in requirement.split(";")[0], requirement
