"""Render Kubernetes manifests for a given stable and canary version: a kustomize overlay.

The overlay sits beside a copy of `deploy/kubernetes/base`, so the folder is complete on its
own: `kubectl apply -k FOLDER`. It pins each model server to its version and writes the
routing ConfigMap to match.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from contracts.routing import RoutingConfig, render_routing
from controller.errors import ControllerError

BASE = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "base"


@dataclass(frozen=True)
class Release:
    """What to deploy: versions, the canary's share, where images and MLflow are."""

    model: str
    stable: str
    canary: str | None
    weight: float
    namespace: str
    registry: str
    tag: str
    tracking_uri: str


def render_overlay(release: Release, folder: Path) -> list[Path]:
    """Write the base copy and the overlay into `folder`; return the files written."""
    if not BASE.is_dir():
        raise ControllerError(f"the Kubernetes base is not at {BASE} (run from a source checkout)")
    routing = _routing(release)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(BASE, folder / "base", dirs_exist_ok=True)
    resources = ["namespace.yaml", "base"]
    settings = "mlcanary-settings"
    patches = [
        _json_patch("ConfigMap", "mlcanary-routing", "/data/routing.yaml",
                    render_routing(routing).decode()),
        _json_patch("ConfigMap", settings, "/data/MLFLOW_TRACKING_URI", release.tracking_uri),
        _json_patch("ConfigMap", settings, "/data/DEFAULT_MODEL_NAME", release.model),
        _args_patch("model-stable", release.model, release.stable),
    ]  # fmt: skip
    if release.canary is not None:
        patches.append(_args_patch("model-canary", release.model, release.canary))
    else:
        patches.append(_json_patch("Deployment", "model-canary", "/spec/replicas", 0))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": release.namespace,
        "resources": resources,
        "images": [
            {"name": f"mlcanary/{image}", "newName": f"{release.registry}/{image}",
             "newTag": release.tag}
            for image in ("router", "model-server", "controller")
        ],
        "patches": patches,
    }  # fmt: skip
    written = [folder / "kustomization.yaml", folder / "namespace.yaml"]
    written[0].write_text(_yaml(kustomization))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release.namespace}}
    written[1].write_text(_yaml(namespace))
    return written


def _routing(release: Release) -> RoutingConfig:
    document: dict[str, object] = {
        "model": release.model,
        "stable": {"url": "http://model-stable:8080", "version": release.stable},
    }
    if release.canary is not None:
        document["canary"] = {
            "url": "http://model-canary:8080", "version": release.canary, "weight": release.weight,
        }  # fmt: skip
    try:
        return RoutingConfig.model_validate(document)
    except ValueError as error:
        raise ControllerError(f"cannot render that split: {error}") from None


def _json_patch(kind: str, name: str, path: str, value: object) -> dict[str, object]:
    return {
        "target": {"kind": kind, "name": name},
        "patch": _yaml([{"op": "replace", "path": path, "value": value}]),
    }


def _args_patch(deployment: str, model: str, version: str) -> dict[str, object]:
    path = "/spec/template/spec/containers/0/args"
    return _json_patch("Deployment", deployment, path, [f"models:/{model}/{version}"])


def _yaml(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False)
