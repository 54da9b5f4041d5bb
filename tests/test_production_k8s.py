"""The Kubernetes work-pool base job template for GPU workers: it passes the checks the
Prefect server runs when a pool is created, and the Job a worker renders from it asks for
a GPU node, a GPU, and the factory's volumes where the image expects them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deployments" / "k8s-gpu-job-template.json"
# What prefect-kubernetes's job configuration and variables carry (BaseVariables included).
WORKER_FIELDS = {"command", "env", "labels", "name", "namespace", "job_manifest"}


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _render(template: dict, job_variables: dict | None = None) -> dict:
    """The job configuration as the worker builds it: variable defaults, then the
    deployment's job variables, applied to the placeholders."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    values = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    values.update(job_variables or {})
    return apply_values(template["job_configuration"], values)


def _container(job: dict) -> dict:
    containers = job["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["prefect-job"], "the worker edits prefect-job"
    return containers[0]


def test_the_template_passes_the_servers_work_pool_validation(template):
    from prefect.server.schemas.actions import WorkPoolCreate, validate_base_job_template
    from prefect.utilities.schema_tools.validation import is_valid_schema, validate

    assert validate_base_job_template(template) is template
    WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=template)
    assert WORKER_FIELDS <= set(template["job_configuration"])
    assert WORKER_FIELDS - {"job_manifest"} <= set(template["variables"]["properties"])
    is_valid_schema(template["variables"])
    defaults = _render({"job_configuration": {}, "variables": template["variables"]})
    assert validate(defaults, template["variables"], raise_on_error=True) == []


def test_every_variable_is_used_and_documented(template):
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    properties = template["variables"]["properties"]
    assert set(properties) == used, "declared but unused, or used but undeclared"
    assert all(spec.get("description") for spec in properties.values())


def test_the_job_asks_for_one_gpu_on_a_gpu_node_and_runs_once(template):
    job = _render(template)
    manifest = job["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    # Prefect retries a failed shard; a Kubernetes retry would run the flow twice.
    assert manifest["spec"]["backoffLimit"] == 0
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    resources = _container(job)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    # The image runs as uid 10001; fsGroup makes the claims writable for it.
    assert pod["securityContext"]["fsGroup"] == 10001


def test_a_deployment_can_ask_for_more_gpus_and_another_node_pool(template):
    job = _render(
        template, {"gpu_count": 2, "node_selector": {"pool": "a100"}, "namespace": "factory"}
    )
    assert _container(job)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert job["job_manifest"]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a100"}
    assert job["namespace"] == job["job_manifest"]["metadata"]["namespace"] == "factory"


def test_the_volumes_match_the_compose_workers_mounts(template):
    job = _render(template)
    container = _container(job)
    volumes = {v["name"]: v for v in job["job_manifest"]["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} == set(volumes), "a mount without a volume"
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    # "SOURCE:TARGET[:ro]"; the source may hold a ${VAR:-/default} with colons of its own.
    compose_mounts = dict(
        re.search(r":(/[^:]+)(?::(\w+))?$", v).groups()
        for v in compose["services"]["worker"]["volumes"]
    )
    for path, mode in compose_mounts.items():
        assert path in mounts, f"the compose worker mounts {path}; the Kubernetes job does not"
        assert mounts[path].get("readOnly", False) == (mode == "ro"), path
        claim = volumes[mounts[path]["name"]]["persistentVolumeClaim"]
        assert claim["claimName"].startswith("label-freedom-")
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_the_default_image_is_the_compose_workers_image(template):
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert (
        _render(template)["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"]
        == (compose["services"]["worker"]["image"])
    )
