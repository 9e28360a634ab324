"""The KubeRay manifests in cluster/k8s/ against the RayCluster and RayJob CRD schemas.

The schemas (tests/data/kuberay/crds.yaml) are a hand-derived subset of KubeRay's ray.io/v1 CRDs;
the README beside them says where each part comes from. Validation does what the API server does
with a structural schema: types, int32/int64 ranges, enums, quantity patterns and required fields,
and no fields the schema does not list. The API server drops such a field (or refuses it under
strict field validation), so `minReplica: 3` would leave the group at the default without a word.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker

from harvest.cluster.config import load_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "cluster" / "k8s"
CRD_FILE = REPO / "tests" / "data" / "kuberay" / "crds.yaml"

RAY_VERSION = "2.60.0"
CPU_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311"
GPU_IMAGE = f"{CPU_IMAGE}-gpu"
TOKEN_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "harvest-ray-auth", "key": "auth_token"}}},
]

# What each worker group is for, as the comments in raycluster.yaml describe it.
WORKER_GROUPS = {
    "collectors": {"min_replicas": 1, "custom_resource": "collector", "image": CPU_IMAGE, "gpus": 0},
    "learners": {"min_replicas": 0, "custom_resource": "learner", "image": GPU_IMAGE, "gpus": 1},
}

FORMATS = FormatChecker()


@FORMATS.checks("int32")
def _is_int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def crd_schemas(path: Path) -> dict[str, dict]:
    """The ray.io/v1 openAPIV3Schema of each CustomResourceDefinition in a file, by kind.

    Reads a List of CRDs (our crds.yaml) as well as KubeRay's own files, one CRD per document.
    """
    schemas = {}
    for document in yaml.safe_load_all(path.read_text()):
        for crd in document["items"] if document["kind"] == "List" else [document]:
            version = next(version for version in crd["spec"]["versions"] if version["name"] == "v1")
            schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def reject_unknown_fields(schema: dict) -> dict:
    """A copy of a structural schema in which objects with `properties` take no other keys.

    Objects marked `x-kubernetes-preserve-unknown-fields` stay open, as on the API server; maps
    (`additionalProperties: {...}`) keep their value schema.
    """
    closed = dict(schema)
    if "properties" in schema:
        closed["properties"] = {name: reject_unknown_fields(field) for name, field in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            closed.setdefault("additionalProperties", False)
    for keyword in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(keyword), dict):
            closed[keyword] = reject_unknown_fields(schema[keyword])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema:
            closed[keyword] = [reject_unknown_fields(branch) for branch in schema[keyword]]
    return closed


def schema_errors(manifest: dict, schemas: dict[str, dict]) -> list[str]:
    """Each way a manifest breaks the schema of its kind, as `dotted.path: message`."""
    validator = Draft202012Validator(reject_unknown_fields(schemas[manifest["kind"]]), format_checker=FORMATS)
    return sorted(
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


def load_manifest(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def cluster_spec(name: str) -> dict:
    """The RayClusterSpec of a manifest: a RayCluster's spec, or a RayJob's rayClusterSpec."""
    manifest = load_manifest(name)
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def ray_groups(spec: dict) -> dict[str, dict]:
    """The head group ("head") and each worker group of a RayClusterSpec, by name."""
    return {"head": spec["headGroupSpec"]} | {group["groupName"]: group for group in spec["workerGroupSpecs"]}


def ray_container(group: dict) -> dict:
    """The container that runs Ray in a group's pods: KubeRay takes the first."""
    return group["template"]["spec"]["containers"][0]


def custom_resources(ray_start_params: dict[str, str]) -> dict[str, float]:
    """The `resources` start parameter as Ray reads it: KubeRay pastes it into a shell command."""
    words = shlex.split(ray_start_params["resources"])
    assert len(words) == 1, f"resources={ray_start_params['resources']!r} splits into {words} in the shell"
    return json.loads(words[0])


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    return crd_schemas(CRD_FILE)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_manifest_matches_its_crd_schema(name, schemas):
    manifest = load_manifest(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert schema_errors(manifest, schemas) == []


def node_at(manifest: dict, path: tuple) -> Any:
    for key in path:
        manifest = manifest[key]
    return manifest


def renamed(path: tuple, old: str, new: str) -> Callable[[dict], None]:
    """A change that renames the field `old` of the object at `path` to `new`, as a typo would."""

    def mutate(manifest: dict) -> None:
        node = node_at(manifest, path)
        node[new] = node.pop(old)

    return mutate


def set_to(path: tuple, key: str, value: Any) -> Callable[[dict], None]:
    """A change that sets the field `key` of the object at `path` to `value`."""

    def mutate(manifest: dict) -> None:
        node_at(manifest, path)[key] = value

    return mutate


COLLECTORS = ("spec", "workerGroupSpecs", 0)
LEARNERS = ("spec", "workerGroupSpecs", 1)
HEAD_CONTAINER = ("spec", "headGroupSpec", "template", "spec", "containers", 0)

# One broken field per case: the file, the change, and the error that must name it.
BROKEN_MANIFESTS = [
    (
        "raycluster.yaml",
        renamed(COLLECTORS, "minReplicas", "minReplica"),
        "spec.workerGroupSpecs.0: Additional properties are not allowed ('minReplica' was unexpected)",
    ),
    (
        "raycluster.yaml",
        renamed(LEARNERS, "groupName", "name"),
        "spec.workerGroupSpecs.1: 'groupName' is a required property",
    ),
    (
        "raycluster.yaml",
        renamed((*LEARNERS, "template", "spec", "containers", 0), "resources", "resource"),
        "spec.workerGroupSpecs.1.template.spec.containers.0: Additional properties are not allowed "
        "('resource' was unexpected)",
    ),
    (
        "raycluster.yaml",
        set_to(("spec", "headGroupSpec", "rayStartParams"), "num-cpus", 0),
        "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
    ),
    (
        "raycluster.yaml",
        set_to(COLLECTORS, "maxReplicas", 2**31),
        "spec.workerGroupSpecs.0.maxReplicas: 2147483648 is not a 'int32'",
    ),
    (
        "raycluster.yaml",
        set_to(("spec", "autoscalerOptions"), "upscalingMode", "Fast"),
        "spec.autoscalerOptions.upscalingMode: 'Fast' is not one of ['Default', 'Aggressive', 'Conservative']",
    ),
    (
        "raycluster.yaml",
        set_to((*HEAD_CONTAINER, "resources", "limits"), "memory", "8 GiB"),
        "spec.headGroupSpec.template.spec.containers.0.resources.limits.memory: '8 GiB' does not match",
    ),
    (
        "raycluster.yaml",
        renamed((*HEAD_CONTAINER, "env", 1, "valueFrom", "secretKeyRef"), "key", "keys"),
        "spec.headGroupSpec.template.spec.containers.0.env.1.valueFrom.secretKeyRef: 'key' is a required property",
    ),
    (
        "rayjob.yaml",
        renamed(("spec",), "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        "spec: Additional properties are not allowed ('shutdownAfterJobFinish' was unexpected)",
    ),
    (
        "rayjob.yaml",
        set_to(("spec", "rayClusterSpec"), "enableInTreeAutoscaling", "true"),
        "spec.rayClusterSpec.enableInTreeAutoscaling: 'true' is not of type 'boolean'",
    ),
    (
        "rayjob.yaml",
        renamed(("spec", "submitterPodTemplate", "spec"), "containers", "container"),
        "spec.submitterPodTemplate.spec: 'containers' is a required property",
    ),
]


@pytest.mark.parametrize(
    "name, mutate, expected_error",
    BROKEN_MANIFESTS,
    ids=[f"{name}:{error.split(':')[0]}" for name, _, error in BROKEN_MANIFESTS],
)
def test_schema_check_names_a_broken_field(name, mutate, expected_error, schemas):
    manifest = load_manifest(name)
    mutate(manifest)
    errors = schema_errors(manifest, schemas)
    assert any(error.startswith(expected_error) for error in errors), errors


# A small structural schema: an object with listed fields, one that keeps unknown fields, a map.
OPENNESS_SCHEMA = {
    "type": "object",
    "properties": {
        "listed": {"type": "object", "properties": {"a": {"type": "string"}}},
        "preserved": {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


@pytest.mark.parametrize(
    "document, accepted",
    [
        ({"listed": {"a": "x"}}, True),
        ({"listed": {"a": "x", "b": "y"}}, False),
        ({"preserved": {"a": "x", "b": "y"}}, True),
        ({"preserved": {"a": 1}}, False),
        ({"labels": {"any-key": "x"}}, True),
        ({"labels": {"any-key": 1}}, False),
        ({"unlisted": {}}, False),
    ],
)
def test_unknown_fields_are_rejected_unless_the_schema_preserves_them(document, accepted):
    validator = Draft202012Validator(reject_unknown_fields(OPENNESS_SCHEMA))
    assert validator.is_valid(document) == accepted


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_head_serves_the_dashboard_and_runs_no_tasks(name):
    head = cluster_spec(name)["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {port["name"]: port["containerPort"] for port in ray_container(head)["ports"]}
    assert ports["dashboard"] == 8265
    assert ray_container(head)["image"] == CPU_IMAGE
    assert "nvidia.com/gpu" not in ray_container(head)["resources"]["limits"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_worker_groups_mark_collector_and_learner_nodes(name):
    spec = cluster_spec(name)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert sorted(groups) == sorted(WORKER_GROUPS)
    for group_name, expected in WORKER_GROUPS.items():
        group = groups[group_name]
        assert group["minReplicas"] == expected["min_replicas"], group_name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group_name
        assert group["maxReplicas"] >= 1, group_name
        assert list(custom_resources(group["rayStartParams"])) == [expected["custom_resource"]], group_name
        container = ray_container(group)
        assert container["image"] == expected["image"], group_name
        assert container["resources"]["limits"].get("nvidia.com/gpu", 0) == expected["gpus"], group_name


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_ray_containers_request_what_they_limit(name):
    # Ray sizes a node from its limits; requests below them would let Kubernetes squeeze the pod.
    for group_name, group in ray_groups(cluster_spec(name)).items():
        resources = ray_container(group)["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"]), group_name
        assert resources["requests"] == resources["limits"], group_name


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_every_ray_container_reads_the_token_from_the_secret(name):
    spec = cluster_spec(name)
    envs = {f"group {group_name}": ray_container(group)["env"] for group_name, group in ray_groups(spec).items()}
    envs["autoscaler"] = spec["autoscalerOptions"]["env"]
    if name == "rayjob.yaml":
        submitter = load_manifest(name)["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
        envs["submitter"] = submitter["env"]
    for where, env in envs.items():
        # Equal to TOKEN_ENV, so no token is ever written into the manifest itself.
        assert [variable for variable in env if variable["name"].startswith("RAY_AUTH")] == TOKEN_ENV, where


def test_rayjob_cluster_has_the_groups_of_raycluster():
    cluster, job = cluster_spec("raycluster.yaml"), cluster_spec("rayjob.yaml")
    assert ray_groups(job).keys() == ray_groups(cluster).keys()
    for group_name, group in ray_groups(cluster).items():
        assert ray_groups(job)[group_name] == group, f"group {group_name!r}: rayjob.yaml differs from raycluster.yaml"
    for key in ("rayVersion", "enableInTreeAutoscaling", "autoscalerOptions"):
        assert job[key] == cluster[key], key


def test_rayjob_runs_an_example_config_on_its_own_cluster():
    argv = shlex.split(load_manifest("rayjob.yaml")["spec"]["entrypoint"])
    # `harvest` is the console script for harvest.cluster.cli:main; the job does not install Harvest.
    assert argv[:4] == ["python", "-m", "harvest", "run"]
    config_path, options = argv[4], argv[5:]
    overrides = options[1::2]
    assert options[::2] == ["--set"] * len(overrides)
    cfg = load_config(REPO / config_path, overrides)
    assert cfg.ray.address == "auto"


def test_rayjob_runtime_env_installs_the_project_dependencies():
    runtime_env = yaml.safe_load(load_manifest("rayjob.yaml")["spec"]["runtimeEnvYAML"])
    assert sorted(runtime_env) == ["pip", "working_dir"]
    # K8sJobMode submits from a pod that holds only the Ray image: the code must be a remote zip.
    working_dir = urlparse(runtime_env["working_dir"])
    assert working_dir.scheme in {"https", "s3", "gs"} and working_dir.path.endswith(".zip")
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    # Ray comes with the image; pip installing another over it would break the node.
    assert runtime_env["pip"] == [requirement for requirement in dependencies if requirement_name(requirement) != "ray"]
    torch = next(requirement for requirement in runtime_env["pip"] if requirement_name(requirement) == "torch")
    assert ">=" in torch and "<" in torch.replace("<=", ""), torch


def test_rayjob_cleans_up_after_itself():
    spec = load_manifest("rayjob.yaml")["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
