"""Resolve a model URI once to a concrete version, load it, and warm it on its input example."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_server.fastpath.choose import FastPath, Probes, choose_fast_path, flavor_name
from model_server.model.scoring import score_with_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.pyfunc import PyFuncModel
    from mlflow.types import Schema

UNREGISTERED = "unregistered"


class ModelLoadError(Exception):
    """The URI cannot be resolved or the model cannot be loaded or warmed."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned, once, to what it pointed at when the server started."""

    requested_uri: str
    uri: str
    """Concrete: `models:/Name/3` for a registry URI, else the URI as given."""
    name: str | None
    version: str
    """Registry version, or `unregistered` for runs, logged models and paths."""
    run_id: str | None


@dataclass(frozen=True)
class Description:
    """What `/metadata` and `/health` say about a model: plain data, sent between processes."""

    flavor: str
    signature: dict[str, Any] | None
    input_example: Any
    loaded_at: str
    load_seconds: float
    warm_up: str
    path: str
    """Which path answers plain JSON rows, and why."""


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded with MLflow, warmed, and the fast path chosen for it."""

    resolved: ResolvedModel
    local: Path
    """The downloaded model folder."""
    pyfunc: PyFuncModel
    input_schema: Schema | None
    flavor: str
    signature: dict[str, Any] | None
    input_example: Any
    serving_example: bytes | None
    loaded_at: str
    load_seconds: float
    warm_up: str = ""
    fast_path: FastPath | None = None
    path: str = ""
    """Which path answers plain JSON rows, and why: shown in `/metadata`."""
    probes: Probes = ()
    """The rows the fast path was checked on, with MLflow's answers."""


def resolve(model_uri: str, client: MlflowClient | None = None) -> ResolvedModel:
    """Pin `model_uri` to a concrete registry version (alias, `latest`), or keep it as given."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        run_id = (
            model_uri.removeprefix("runs:/").split("/")[0]
            if model_uri.startswith("runs:/")
            else None
        )
        return ResolvedModel(model_uri, model_uri, None, UNREGISTERED, run_id)
    rest = model_uri.removeprefix("models:/").strip("/")
    client = client or MlflowClient()
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, version = rest.split("/", 1)
            if version == "latest":
                candidates = client.search_model_versions(f"name = '{name}'")
                if not candidates:
                    raise ModelLoadError(f"registered model {name!r} has no versions")
                found = max(candidates, key=lambda candidate: int(candidate.version))
            else:
                found = client.get_model_version(name, version)
        else:
            return ResolvedModel(model_uri, model_uri, None, UNREGISTERED, None)
    except MlflowException as error:
        raise ModelLoadError(f"cannot resolve {model_uri}: {error.message}") from None
    concrete = f"models:/{found.name}/{found.version}"
    return ResolvedModel(model_uri, concrete, found.name, str(found.version), found.run_id)


def load(
    resolved: ResolvedModel,
    *,
    download_to: Path | None = None,
    local: Path | None = None,
    choose: bool = True,
) -> LoadedModel:
    """Download (unless `local` holds it already) and load the model, then warm it.

    With `choose`, also check the fast path candidates against MLflow's path and keep one.
    """
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    # As `mlflow models serve` does: type-hinted models then take base64 text as bytes and
    # ISO text as datetimes, and must answer their own input example that way.
    os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"
    started = time.perf_counter()
    try:
        if local is None:
            destination = str(download_to) if download_to else None
            local = Path(mlflow.artifacts.download_artifacts(resolved.uri, dst_path=destination))
        pyfunc = mlflow.pyfunc.load_model(str(local))
    except (MlflowException, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        raise ModelLoadError(f"cannot load {resolved.uri}: {message}") from None
    metadata = pyfunc.metadata
    signature = metadata.signature
    loaded = LoadedModel(
        resolved=resolved,
        local=local,
        pyfunc=pyfunc,
        input_schema=metadata.get_input_schema(),
        flavor=flavor_name(metadata.flavors),
        signature=_signature_json(signature.to_dict()) if signature else None,
        input_example=_input_example(metadata, local),
        serving_example=_serving_example(metadata, local),
        loaded_at=datetime.now(UTC).isoformat(),
        load_seconds=time.perf_counter() - started,
    )
    warmed = warm(loaded)
    if not choose:
        return warmed
    fast_path, path, probes = choose_fast_path(warmed)
    return replace(warmed, fast_path=fast_path, path=path, probes=probes)


def describe(model: LoadedModel) -> Description:
    """Return what the model's server says about it."""
    return Description(
        flavor=model.flavor,
        signature=model.signature,
        input_example=model.input_example,
        loaded_at=model.loaded_at,
        load_seconds=model.load_seconds,
        warm_up=model.warm_up,
        path=model.path,
    )


def warm(model: LoadedModel) -> LoadedModel:
    """Predict the logged serving example through MLflow's own path; refuse to start if it fails."""
    if model.serving_example is None:
        return replace(model, warm_up="no input example was logged; nothing to warm on")
    status, body, _ = score_with_mlflow(model, model.serving_example, "application/json")
    if status != 200:
        raise ModelLoadError(f"the model fails on its own input example: {body.decode()[:500]}")
    answered = json.loads(body)
    expected = answered.get("predictions") if isinstance(answered, dict) else answered
    rows_seen = len(expected) if isinstance(expected, list | dict) else 1
    return replace(model, warm_up=f"warm: predicted {rows_seen} example row(s)")


def _signature_json(signature: dict[str, Any]) -> dict[str, Any]:
    return {
        key: json.loads(value) if isinstance(value, str) else value
        for key, value in signature.items()
    }


def _input_example(metadata: Any, local: Path) -> Any:
    """Return the logged input example as JSON-able data, or None."""
    if not metadata.saved_input_example_info:
        return None
    try:
        example = metadata.load_input_example(str(local))
    # A broken example must not stop serving: /metadata then shows none.
    except Exception:  # noqa: BLE001
        return None
    to_dict = getattr(example, "to_dict", None)
    return to_dict(orient="records") if to_dict else example


def _serving_example(metadata: Any, local: Path) -> bytes | None:
    """Return the logged serving input example (a request body), or None."""
    info = metadata.saved_input_example_info or {}
    name = info.get("serving_input_path")
    if not name or not (local / name).is_file():
        return None
    return (local / str(name)).read_bytes()
