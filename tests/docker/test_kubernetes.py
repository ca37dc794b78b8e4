"""docker/kubernetes validated offline: every resource against the Kubernetes API schemas bundled
with kubernetes-validate (strict: an unknown field fails), the kustomization listing every file,
and what ties the manifests to the node: the Secret's keys are settings the node accepts (loaded
and validated as the node would), the workers reach the node through its Service's http port and
ask for a GPU, the node keeps its data on the PVC and is probed on /health.

Not covered: a cluster (none here); the images themselves (tests/docker/test_stack.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type information
import pytest
import yaml

from dicom_node.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "docker" / "kubernetes"


def resources() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_kind(kind: str, name: str) -> dict[str, Any]:
    return next(doc for _, doc in resources() if doc["kind"] == kind and doc["metadata"]["name"] == name)


@pytest.mark.parametrize(
    ("file", "resource"), resources(), ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}"
)
def test_each_resource_is_valid_against_the_api_schema(file: str, resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_an_invalid_resource_is_refused() -> None:
    broken = by_kind("Deployment", "covid-ct-worker")
    broken = {**broken, "spec": {**broken["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_manifests_fit_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = by_kind("Secret", "covid-ct-node")["stringData"]
    node = by_kind("Deployment", "covid-ct-node")["spec"]["template"]["spec"]
    worker = by_kind("Deployment", "covid-ct-worker")["spec"]["template"]["spec"]
    service = by_kind("Service", "covid-ct-node")

    # The Secret and the worker's environment are settings the node accepts.
    worker_env = {e["name"]: e["value"] for e in worker["containers"][0].get("env", [])}
    for key, value in {**secret, **worker_env}.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(data_dir=tmp_path)
    assert settings.remote.node_url and settings.remote.token and settings.broker_url and settings.database_url

    # Workers reach the node's Service on its http port, ask for a GPU, and run the CUDA device.
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    assert settings.remote.node_url == f"http://{service['metadata']['name']}:{http['port']}"
    w = worker["containers"][0]
    assert w["resources"]["limits"]["nvidia.com/gpu"] >= 1 and w["args"][:3] == ["worker", "--device", "cuda"]
    assert [v.get("emptyDir") is not None for v in worker["volumes"]] == [True], "a worker keeps only a cache"

    # The node keeps its data on the PVC and is probed on /health.
    n = node["containers"][0]
    assert n["args"] == ["serve"] and n["readinessProbe"]["httpGet"]["path"] == "/health"
    claim = node["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert by_kind("PersistentVolumeClaim", claim)
    assert n["volumeMounts"][0]["mountPath"] == "/var/lib/dicom-node"
