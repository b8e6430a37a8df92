"""The controller's view of the MLflow registry: aliases kept in step, versions listed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from common.settings import RegistrySettings
from controller.errors import ControllerError
from training.registry import CHALLENGER, CHAMPION, connect, versions_of


@dataclass(frozen=True)
class Aliases:
    """Which versions carry `champion` (stable) and `challenger` (canary, if any)."""

    champion: str | None
    challenger: str | None


def aliases_for(stable: str, canary: str | None) -> Aliases:
    """Aliases matching a split: no challenger when there is no canary or it is stable's."""
    return Aliases(champion=stable, challenger=canary if canary not in (None, stable) else None)


class Registry:
    """Blocking MLflow calls, run in a thread so the controller's loop keeps serving."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings

    async def set_aliases(self, wanted: Aliases) -> None:
        """Move `champion` and `challenger`; raise ControllerError if the registry refuses."""
        await self._run(self._set_aliases, wanted)

    async def aliases(self) -> Aliases:
        """Return where the two aliases point now."""
        aliases: Aliases = await self._run(self._aliases)
        return aliases

    async def versions(self) -> list[dict[str, Any]]:
        """Return the model's versions, oldest first, with aliases, run and creation time."""
        versions: list[dict[str, Any]] = await self._run(self._versions)
        return versions

    async def exists(self, version: str) -> bool:
        """Tell whether the model has this version."""
        return any(item["version"] == version for item in await self.versions())

    async def _run(self, call: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except ControllerError:
            raise
        except Exception as error:  # noqa: BLE001 (MLflow raises many kinds; all mean "not now")
            where = self.settings.tracking_uri
            raise ControllerError(f"the registry at {where} failed: {error}") from None

    def _set_aliases(self, wanted: Aliases) -> None:
        client = connect(self.settings)
        name = self.settings.model_name
        for alias, version in ((CHAMPION, wanted.champion), (CHALLENGER, wanted.challenger)):
            if version is None:
                try:
                    client.delete_registered_model_alias(name, alias)
                except Exception as error:
                    if "RESOURCE_DOES_NOT_EXIST" not in str(error) and "not found" not in str(
                        error
                    ):
                        raise
            else:
                client.set_registered_model_alias(name, alias, version)

    def _aliases(self) -> Aliases:
        found = self._alias_map()
        return Aliases(found.get(CHAMPION), found.get(CHALLENGER))

    def _alias_map(self) -> dict[str, str]:
        """Alias -> version (search results leave aliases out, the registered model has them)."""
        client = connect(self.settings)
        try:
            model = client.get_registered_model(self.settings.model_name)
        except Exception as error:  # a model not registered yet has no aliases
            if "RESOURCE_DOES_NOT_EXIST" in str(error):
                return {}
            raise
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def _versions(self) -> list[dict[str, Any]]:
        aliases = self._alias_map()
        return [
            {
                "version": str(version.version),
                "aliases": sorted(a for a, v in aliases.items() if v == str(version.version)),
                "run_id": version.run_id,
                "created_at_ms": version.creation_timestamp,
                "description": version.description or "",
            }
            for version in versions_of(connect(self.settings), self.settings.model_name)
        ]
