"""The Kubernetes API as the controller uses it.

Credentials are found once; every call's errors become a ControllerError naming the object. Used
by the ConfigMap store (the routing file) and by the router directory (router pods from
a Service's Endpoints). The official client is blocking: calls run in a thread.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from common.settings import system_settings
from controller.errors import ControllerError


class KubeApi:
    """The core/v1 API with the in-cluster service account, else the kubeconfig."""

    def __init__(self, namespace: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
            default_namespace = _service_account_namespace()
        except config.ConfigException:
            # Read KUBECONFIG now: the client reads it once, when it is imported.
            kubeconfig = (system_settings().kubeconfig or "").split(os.pathsep)[0] or None
            try:
                config.load_kube_config(config_file=kubeconfig)
            except (config.ConfigException, OSError) as error:
                raise ControllerError(f"no Kubernetes credentials: {error}") from None
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            default_namespace = (active or {}).get("context", {}).get("namespace", "default")
        self.namespace: str = namespace or default_namespace
        self.core: Any = client.CoreV1Api()
        self.api_error: type[Exception] = client.ApiException

    async def call(self, what: str, method: Any, *args: Any) -> Any:
        """Run one API call; ControllerError naming `what` if the API refuses or is unreachable."""
        try:
            return await asyncio.to_thread(method, *args)
        except self.api_error as error:
            status = getattr(error, "status", "?")
            reason = getattr(error, "reason", error)
            raise ControllerError(f"{what}: the API answered ({status}) {reason}") from None
        except Exception as error:  # noqa: BLE001 (urllib3 and socket errors: API unreachable)
            raise ControllerError(f"{what}: the API cannot be reached: {error}") from None


def _service_account_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        return Path(path).read_text().strip()
    except OSError:
        return system_settings().pod_namespace
