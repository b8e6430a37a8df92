"""Where the routing file lives: a file on disk (the default), or a Kubernetes ConfigMap.

Both keep the same bytes (router/config.py renders and validates them) and report the same
content version the routers show in /health, so confirmation works the same way.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.errors import ControllerError
from router.config import (
    RoutingConfig,
    RoutingFileError,
    content_version,
    parse_routing,
    read_routing_file,
    render_routing,
    write_routing_file,
)

CONFIGMAP_KEY = "routing.yaml"


class RoutingStore(Protocol):
    """Reads and writes the split as a whole."""

    async def exists(self) -> bool:
        """Tell whether there is a split yet."""

    async def load(self) -> tuple[RoutingConfig, str]:
        """Return the split and its content version."""

    async def save(self, config: RoutingConfig) -> str:
        """Replace the split atomically; return the new content version."""

    def describe(self) -> str:
        """Say where the split lives, for messages."""


@dataclass(frozen=True)
class FileStore:
    """The routing file on disk, written atomically (temp file, fsync, rename)."""

    path: Path

    async def exists(self) -> bool:
        """Tell whether the file exists."""
        return self.path.exists()

    async def load(self) -> tuple[RoutingConfig, str]:
        """Read and validate the file."""
        return await asyncio.to_thread(read_routing_file, self.path)

    async def save(self, config: RoutingConfig) -> str:
        """Write the file atomically; ControllerError if the disk refuses."""
        try:
            return await asyncio.to_thread(write_routing_file, self.path, config)
        except OSError as error:
            raise ControllerError(f"cannot write {self.path}: {error.strerror or error}") from None

    def describe(self) -> str:
        """Name the file."""
        return str(self.path)


class ConfigMapStore:
    """The routing file as key `routing.yaml` of a ConfigMap, through the Kubernetes API.

    Routers mount the ConfigMap as a volume (not subPath), so the kubelet swaps the `..data`
    symlink and they reload. Credentials: in-cluster service account, else kubeconfig.
    """

    def __init__(self, name: str, namespace: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
            default_namespace = _service_account_namespace()
        except config.ConfigException:
            # Read KUBECONFIG now: the client reads it once, when it is imported.
            kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            try:
                config.load_kube_config(config_file=kubeconfig)
            except (config.ConfigException, OSError) as error:
                raise ControllerError(f"no Kubernetes credentials: {error}") from None
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            default_namespace = (active or {}).get("context", {}).get("namespace", "default")
        self.name, self.namespace = name, namespace or default_namespace
        self.api: Any = client.CoreV1Api()
        self.api_error: type[Exception] = client.ApiException

    async def exists(self) -> bool:
        """Tell whether the ConfigMap holds a routing file."""
        try:
            found = await self._call(self.api.read_namespaced_config_map, self.name, self.namespace)
        except ControllerError as error:
            if "(404)" in str(error):
                return False
            raise
        return bool((found.data or {}).get(CONFIGMAP_KEY))

    async def load(self) -> tuple[RoutingConfig, str]:
        """Read and validate the ConfigMap's routing file."""
        found = await self._call(self.api.read_namespaced_config_map, self.name, self.namespace)
        data = (found.data or {}).get(CONFIGMAP_KEY, "").encode()
        try:
            return parse_routing(data, self.describe()), content_version(data)
        except RoutingFileError as error:
            raise ControllerError(str(error)) from None

    async def save(self, config: RoutingConfig) -> str:
        """Patch the ConfigMap's routing file in one call (the API applies it whole)."""
        data = render_routing(config)
        parse_routing(data, self.describe())
        body = {"data": {CONFIGMAP_KEY: data.decode()}}
        await self._call(self.api.patch_namespaced_config_map, self.name, self.namespace, body)
        return content_version(data)

    def describe(self) -> str:
        """Name the ConfigMap."""
        return f"configmap {self.namespace}/{self.name}"

    async def _call(self, method: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(method, *args)
        except self.api_error as error:
            status = getattr(error, "status", "?")
            reason = getattr(error, "reason", error)
            message = f"{self.describe()}: the API answered ({status}) {reason}"
            raise ControllerError(message) from None
        except RoutingFileError as error:
            raise ControllerError(str(error)) from None
        except Exception as error:  # noqa: BLE001 (urllib3 and socket errors: API unreachable)
            message = f"{self.describe()}: the API cannot be reached: {error}"
            raise ControllerError(message) from None


def _service_account_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        return Path(path).read_text().strip()
    except OSError:
        return os.environ.get("POD_NAMESPACE", "default")
