"""Every launch file under cluster/ is one Ray (or KubeRay) accepts: a misspelt key fails here, not at `ray up`."""
from __future__ import annotations

import copy
import functools
import shlex

import jsonschema
import pytest
import yaml
from conftest import REPO, SHARED_DATA, require
from jsonschema import Draft7Validator
from ray.autoscaler._private.util import prepare_config, validate_config

from lrml_tune.sweep.driver import parse_command_line

CLUSTER = REPO / "cluster"
LAUNCHER_FILES = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = SHARED_DATA.parent / "reference" / "kuberay"  # KubeRay's CRDs, read in place (see its README)


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


def crd_schema(manifest: dict) -> dict:
    """The openAPIV3Schema KubeRay's CRD declares for the manifest's kind and API version."""
    return _crd_schema(manifest["kind"], manifest["apiVersion"].split("/")[1])


@functools.lru_cache
def _crd_schema(kind: str, version: str) -> dict:
    text = require(KUBERAY / f"ray.io_{kind.lower()}s.yaml").read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: the C parser if there
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def unknown_keys(instance, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not define, as `kubectl apply --validate=strict` refuses them (a structural
    schema lists an object's properties without `additionalProperties: false`, so jsonschema alone would
    let a misspelt key through and the API server would drop it)."""
    found = []
    if isinstance(instance, dict) and schema.get("type") == "object":
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, value in instance.items():
            if properties is not None and key in properties:
                found += unknown_keys(value, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_keys(value, extra, f"{path}.{key}")
            elif properties is not None:
                found.append(f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            found += unknown_keys(item, schema["items"], f"{path}[{index}]")
    return found


def check_against_crd(manifest: dict) -> None:
    schema = crd_schema(manifest)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft7Validator(schema).iter_errors(manifest)]
    assert errors == [] and unknown_keys(manifest, schema) == []


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifest_passes_kuberays_own_schema_strictly(name):
    manifest = k8s(name)
    check_against_crd(manifest)
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {port["containerPort"] for port in head["ports"]} >= {6379, 8265}
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]:
        # /dev/shm in the pod's memory: Kubernetes' default is 64 MB, too little for Ray's object store
        memory = {volume["name"] for volume in pod["volumes"] if volume.get("emptyDir", {}).get("medium") == "Memory"}
        assert any(mount["mountPath"] == "/dev/shm" and mount["name"] in memory
                   for mount in pod["containers"][0]["volumeMounts"]), pod


MISSPELLINGS = [
    ("raycluster.yaml", ("spec", "workerGroupSpecs", 0), "maxReplicas", "maxReplica", ".spec.workerGroupSpecs[0]"),
    ("rayjob.yaml", ("spec",), "shutdownAfterJobFinishes", "shutdownAfterJobFinish", ".spec"),
    ("rayjob.yaml", ("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "resources"),
     "limits", "limit", ".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources"),
]


@pytest.mark.parametrize("name, where, key, misspelt, path", MISSPELLINGS, ids=[m[3] for m in MISSPELLINGS])
def test_a_misspelt_kuberay_key_is_caught(name, where, key, misspelt, path):
    manifest = k8s(name)
    node = manifest
    for step in where:
        node = node[step]
    node[misspelt] = node.pop(key)
    assert unknown_keys(manifest, crd_schema(manifest)) == [f"{path}.{misspelt}"]


def test_rayjob_runs_the_lrml_search_and_its_baselines():
    spec = k8s("rayjob.yaml")["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:4] == ["for", "model", "in", "lrml"] and words[4:6] == ["cml", "bpr;"]
    command = words[words.index("lrml-search") + 1:words.index("||")]
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    gpus = group["maxReplicas"] * int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    for model in ("lrml", "cml", "bpr"):
        settings, resume = parse_command_line([word.replace("$model", model) for word in command])
        assert settings.model == model and not resume
        assert settings.address == "auto" and settings.storage_path.startswith("s3://") and settings.num_samples == 64
        # the workers scale from zero, so the search is told its concurrency, and the GPUs it asks for fit
        assert group["minReplicas"] == 0 and settings.concurrency == 4
        assert settings.concurrency * settings.workers_per_trial * settings.gpus_per_worker <= gpus
