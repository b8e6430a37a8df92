"""Where the routing file lives: a file on disk (the default), or a Kubernetes ConfigMap.

Both keep the same bytes (router/config.py renders and validates them) and report the same
content version the routers show in /health, so confirmation works the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from contracts.routing import (
    RoutingConfig,
    RoutingFileError,
    content_version,
    parse_routing,
    read_routing_file,
    render_routing,
    write_routing_file,
)
from controller.errors import ControllerError
from controller.kube import KubeApi

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
        self.kube = KubeApi(namespace)
        self.name, self.namespace = name, self.kube.namespace

    async def exists(self) -> bool:
        """Tell whether the ConfigMap holds a routing file."""
        try:
            found = await self._call(
                self.kube.core.read_namespaced_config_map, self.name, self.namespace
            )
        except ControllerError as error:
            if "(404)" in str(error):
                return False
            raise
        return bool((found.data or {}).get(CONFIGMAP_KEY))

    async def load(self) -> tuple[RoutingConfig, str]:
        """Read and validate the ConfigMap's routing file."""
        found = await self._call(
            self.kube.core.read_namespaced_config_map, self.name, self.namespace
        )
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
        await self._call(
            self.kube.core.patch_namespaced_config_map, self.name, self.namespace, body
        )
        return content_version(data)

    def describe(self) -> str:
        """Name the ConfigMap."""
        return f"configmap {self.namespace}/{self.name}"

    async def _call(self, method: Any, *args: Any) -> Any:
        return await self.kube.call(self.describe(), method, *args)
