"""Every launch file under cluster/ is one Ray (or KubeRay) accepts: a misspelt key fails here, not at `ray up`."""
from __future__ import annotations

import copy
import shlex

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO

CLUSTER = REPO / "cluster"
LAUNCHER_FILES = sorted(CLUSTER.glob("*.yaml"))
RAYCLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                   "headServiceAnnotations", "suspend"}
RAYJOB_SPEC = {"entrypoint", "runtimeEnvYAML", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "rayClusterSpec",
               "activeDeadlineSeconds", "backoffLimit", "submissionMode", "entrypointNumCpus", "entrypointNumGpus",
               "clusterSelector", "suspend", "jobId", "metadata"}
GROUP_KEYS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
              "scaleStrategy", "suspend", "idleTimeoutSeconds"}


def test_there_is_a_launch_file_per_provider():
    providers = {yaml.safe_load(path.read_text())["provider"]["type"] for path in LAUNCHER_FILES}
    assert providers == {"aws", "gcp", "local"}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launch_file_passes_rays_schema(path):
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # provider defaults merged first, as `ray up` does
    commands = " ".join(config["setup_commands"])
    assert "pip install" in commands and "lrml-tune" in commands  # every node installs this project


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_a_misspelt_key_is_caught(path):
    config = yaml.safe_load(path.read_text())
    broken = copy.deepcopy(config)
    broken["idle_timeout_minute"] = broken.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(prepare_config(broken))


def k8s(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "k8s" / name).read_text())


def check_cluster_spec(spec: dict) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= GROUP_KEYS, set(group) - GROUP_KEYS
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker = group["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == worker["resources"]["requests"]["nvidia.com/gpu"]


def test_raycluster_manifest():
    manifest = k8s("raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster") and manifest["metadata"]["name"]
    check_cluster_spec(manifest["spec"])


def test_rayjob_manifest_runs_a_valid_search():
    manifest = k8s("rayjob.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob") and manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    check_cluster_spec(spec["rayClusterSpec"])
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "tune/search.py"]
    import search  # tune/ is on pytest's pythonpath (pyproject.toml)
    args = search.parse_args(words[2:])
    assert args.address == "auto" and args.storage_path.startswith("s3://") and args.num_samples == 64
    # the workers scale from zero, so the search is told its concurrency, and the GPUs it asks for fit
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    gpus = group["maxReplicas"] * int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert group["minReplicas"] == 0 and args.concurrency == 4
    assert args.concurrency * args.workers_per_trial * args.gpus_per_worker <= gpus
