"""MLflow registry access for training: reachability, the experiment, versions and aliases."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from training.errors import TrainingError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from common.settings import RegistrySettings

CHAMPION = "champion"
CHALLENGER = "challenger"
REACHABILITY_TIMEOUT_SECONDS = 5.0


def check_reachable(tracking_uri: str, timeout: float = REACHABILITY_TIMEOUT_SECONDS) -> None:
    """Raise TrainingError unless an HTTP tracking server answers at all within `timeout`."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    probe = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(probe, timeout=timeout):  # noqa: S310 (scheme checked above)
            return
    except urllib.error.HTTPError:
        return  # it answered: the server is there, whatever it thinks of /health
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrainingError(f"tracking server {tracking_uri} cannot be reached: {reason}") from None


def wait_until_reachable(
    tracking_uri: str, seconds: float, say: Callable[[str], None], pause: float = 2.0
) -> None:
    """Wait up to `seconds` for an HTTP tracking server to answer; say so once if it does not.

    For a registry that starts beside its client (compose starts them together): the first
    failure is said in one line, then the check repeats quietly until the deadline.
    """
    deadline = time.monotonic() + seconds
    said = False
    while True:
        try:
            check_reachable(tracking_uri)
            return
        except TrainingError as error:
            if time.monotonic() >= deadline:
                raise
            if not said:
                say(f"{error}; retrying for up to {seconds:.0f} s")
                said = True
        time.sleep(pause)


def connect(settings: RegistrySettings) -> MlflowClient:
    """Point MLflow at the settings' registry, creating the embedded one if needed."""
    import mlflow
    from mlflow import MlflowClient

    check_reachable(settings.tracking_uri)
    if settings.embedded:
        database = settings.tracking_uri.removeprefix("sqlite:///")
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrainingError(f"cannot create the state folder: {error}") from None
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """Return the id of experiment `name`, creating it (with `artifact_root`) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = f"{artifact_root}/{name}" if artifact_root else None
    return str(client.create_experiment(name, artifact_location=location))


def versions_of(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    """Return every registered version of `model_name`, oldest first (none if it is new)."""
    if "'" in model_name:
        raise TrainingError(f"model name must not contain a quote: {model_name!r}")
    found = client.search_model_versions(f"name = '{model_name}'")
    return sorted(found, key=lambda version: int(version.version))


def choose_alias(requested: str | None, had_versions: bool) -> str | None:
    """Return the alias for a new version: the requested one, else champion for the first."""
    if requested is not None:
        return requested or None
    return CHALLENGER if had_versions else CHAMPION


def register_version(
    client: MlflowClient,
    model_name: str,
    logged_model: ModelInfo,
    run_id: str,
    tags: dict[str, str],
    alias: str | None,
) -> ModelVersion:
    """Register the logged model as a new version with tags and alias, all or nothing."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        client.create_registered_model(model_name)
    version = client.create_model_version(
        model_name,
        source=logged_model.model_uri,
        run_id=run_id,
        tags=tags,
        model_id=logged_model.model_id,
    )
    try:
        if alias:
            client.set_registered_model_alias(model_name, alias, version.version)
    except Exception:
        client.delete_model_version(model_name, version.version)
        raise
    return version
