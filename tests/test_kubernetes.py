"""The Kubernetes manifests, checked offline: kustomize builds them, kubernetes-validate passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.routing import parse_routing
from tests.helpers import run_mlcanary

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes" / "base"
OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "example"


def build(folder: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` the folder, validate the result strictly, return its documents."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    built = tmp_path / f"{folder.name}.yaml"
    built.write_text(done.stdout)
    validate = Path(sys.executable).parent / "kubernetes-validate"
    checked = subprocess.run(
        [str(validate), "--strict", str(built)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "unknown" not in (checked.stdout + checked.stderr).lower()
    return [document for document in yaml.safe_load_all(done.stdout) if document]


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def test_the_base_builds_validates_and_keeps_its_promises(tmp_path: Path) -> None:
    documents = build(BASE, tmp_path)
    router = find(documents, "Deployment", "router")
    assert router["spec"]["replicas"] >= 2
    mounts = container(router)["volumeMounts"]
    assert mounts[0] == {"name": "routing", "mountPath": "/etc/mlcanary/routing", "readOnly": True}
    assert "subPath" not in str(router)  # a subPath mount never sees ConfigMap updates
    volumes = router["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "routing", "configMap": {"name": "mlcanary-routing"}}
    routing = find(documents, "ConfigMap", "mlcanary-routing")["data"]["routing.yaml"]
    parse_routing(routing.encode(), "base")  # what the routers will accept
    for name, port in (("router", "8000"), ("model-stable", "8080"), ("model-canary", "8080")):
        deployment = find(documents, "Deployment", name)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert (
            annotations["prometheus.io/scrape"] == "true"
            and annotations["prometheus.io/port"] == port
        )
        assert container(deployment)["readinessProbe"]["httpGet"]["path"] == "/health"
        assert find(documents, "Service", name)
    role = find(documents, "Role", "mlcanary-routing-writer")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mlcanary-routing"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": [""], "resources": ["endpoints"], "resourceNames": ["router"],
         "verbs": ["get"]},
    ]  # fmt: skip
    controller = find(documents, "Deployment", "controller")
    assert controller["spec"]["template"]["spec"]["serviceAccountName"] == "mlcanary-controller"
    assert "--configmap=mlcanary-routing" in container(controller)["args"]
    assert "--router-endpoints=router" in container(controller)["args"]  # every pod, by name
    binding = find(documents, "RoleBinding", "mlcanary-routing-writer")
    assert binding["subjects"][0]["name"] == "mlcanary-controller"


def test_the_example_overlay_builds_and_validates(tmp_path: Path) -> None:
    documents = build(OVERLAY, tmp_path)
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {
        "mlcanary"
    }
    assert find(documents, "Deployment", "router")["spec"]["replicas"] == 3
    assert container(find(documents, "Deployment", "router"))["image"].startswith(
        "registry.example.com/"
    )


def test_rendered_manifests_pin_the_versions_and_the_split(tmp_path: Path) -> None:
    done = run_mlcanary(
        "render-k8s", "--output", str(tmp_path / "release"), "--stable", "3", "--canary", "4",
        "--weight", "5", "--namespace", "models", "--tag", "1.2.3", state=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    documents = build(tmp_path / "release", tmp_path)
    stable, canary = (find(documents, "Deployment", f"model-{v}") for v in ("stable", "canary"))
    assert container(stable)["args"] == ["models:/StudentExamPredictor/3"]
    assert container(canary)["args"] == ["models:/StudentExamPredictor/4"]
    assert container(stable)["image"] == "mlcanary/model-server:1.2.3"
    routing = parse_routing(
        find(documents, "ConfigMap", "mlcanary-routing")["data"]["routing.yaml"].encode(), "built"
    )
    assert routing.stable.version == "3" and routing.canary is not None
    assert (routing.canary.version, routing.canary.weight) == ("4", 5.0)
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {
        "models"
    }


def test_rendering_without_a_canary_scales_it_to_zero(tmp_path: Path) -> None:
    done = run_mlcanary(
        "render-k8s", "--output", str(tmp_path / "r"), "--stable", "7", state=tmp_path
    )
    assert done.returncode == 0, done.stderr
    documents = build(tmp_path / "r", tmp_path)
    assert find(documents, "Deployment", "model-canary")["spec"]["replicas"] == 0
    routing = find(documents, "ConfigMap", "mlcanary-routing")["data"]["routing.yaml"]
    assert parse_routing(routing.encode(), "built").canary is None


@pytest.mark.parametrize("weight", ["140", "10.05"])
def test_an_impossible_split_is_refused_naming_the_field(tmp_path: Path, weight: str) -> None:
    done = run_mlcanary(
        "render-k8s", "--output", str(tmp_path / "r"), "--stable", "1", "--canary", "2",
        "--weight", weight, state=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert "weight" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_every_pod_is_hardened_and_only_the_router_reaches_the_model_servers(
    tmp_path: Path,
) -> None:
    """Non-root, read-only, no capability, no escalation, RuntimeDefault seccomp, writable
    volumes where needed; a token only for the controller; its state on a claim; the token
    Secret required; network policies over the model servers and the controller."""
    for folder in (BASE, OVERLAY):
        hardened(build(folder, tmp_path))
    done = run_mlcanary(
        "render-k8s", "--output", str(tmp_path / "release"), "--stable", "3", "--canary", "4",
        state=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    hardened(build(tmp_path / "release", tmp_path))


def hardened(documents: list[dict[str, Any]]) -> None:
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "router", "model-stable", "model-canary", "controller",
    }  # fmt: skip
    scratch = "/tmp"  # noqa: S108 (a path inside the containers, an emptyDir)
    writable = {"/var/lib/mlcanary", scratch}  # each one's state (or caches) and scratch
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert container(deployment)["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, name  # fmt: skip
        mounted = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert writable <= mounted, name
        assert pod.get("automountServiceAccountToken", True) is (name == "controller"), name
    controller = find(documents, "Deployment", "controller")
    volumes = {v["name"]: v for v in controller["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert find(documents, "PersistentVolumeClaim", claim)
    environment = {e["name"]: e for e in container(controller)["env"]}
    for variable in ("MLCANARY_ADMIN_TOKEN", "MLCANARY_LABELS_TOKEN"):
        secret = environment[variable]["valueFrom"]["secretKeyRef"]
        assert secret["name"] == "mlcanary-admin" and not secret.get("optional", False)
    assert "controller" in environment["MLCANARY_ALLOWED_HOSTS"]["value"].split()
    servers = find(documents, "NetworkPolicy", "model-servers")
    selector = servers["spec"]["podSelector"]["matchExpressions"]
    assert selector == [{"key": "mlcanary.io/variant", "operator": "Exists"}]
    for name in ("model-stable", "model-canary"):
        labels = find(documents, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert "mlcanary.io/variant" in labels, name  # the policy covers every model server
    peers = [peer for rule in servers["spec"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "router"}}} in peers
    assert all("ipBlock" not in peer for peer in peers)
    gate = find(documents, "NetworkPolicy", "controller")
    peers = [peer for rule in gate["spec"]["ingress"] for peer in rule["from"]]
    names = {peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name") for peer in peers}
    assert names == {"router", None} and len(peers) == 2  # routers, and pods labelled operators
