"""Resolve a model URI once to a concrete version, load it, and warm it on its input example."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_server.compiled import compile_estimator

if TYPE_CHECKING:
    import numpy as np
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
class FastPath:
    """Predict plain numeric rows straight on the scikit-learn model, skipping pandas parsing."""

    feature_names: tuple[str, ...]
    predict: Callable[[np.ndarray], np.ndarray]
    compiled: bool
    """Whether `predict` is a compiled predictor rather than scikit-learn's own."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded, warmed model and what `/metadata` reports about it."""

    resolved: ResolvedModel
    pyfunc: PyFuncModel
    input_schema: Schema | None
    fast_path: FastPath | None
    flavor: str
    signature: dict[str, Any] | None
    input_example: Any
    serving_example: bytes | None
    loaded_at: str
    load_seconds: float
    warm_up: str = ""
    path: str = ""
    """Which path answers plain JSON rows, and why: shown in `/metadata`."""


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


def load(resolved: ResolvedModel) -> LoadedModel:
    """Download and load the model, then warm it on its logged input example."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    # As `mlflow models serve` does: type-hinted models then take base64 text as bytes and
    # ISO text as datetimes, and must answer their own input example that way.
    os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"
    started = time.perf_counter()
    try:
        local = Path(mlflow.artifacts.download_artifacts(resolved.uri))
        pyfunc = mlflow.pyfunc.load_model(str(local))
    except (MlflowException, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        raise ModelLoadError(f"cannot load {resolved.uri}: {message}") from None
    metadata = pyfunc.metadata
    signature = metadata.signature
    fast_path, path = fast_path_for(pyfunc)
    loaded = LoadedModel(
        resolved=resolved,
        pyfunc=pyfunc,
        input_schema=metadata.get_input_schema(),
        fast_path=fast_path,
        path=path,
        flavor=_flavor(metadata.flavors),
        signature=_signature_json(signature.to_dict()) if signature else None,
        input_example=_input_example(metadata, local),
        serving_example=_serving_example(metadata, local),
        loaded_at=datetime.now(UTC).isoformat(),
        load_seconds=time.perf_counter() - started,
    )
    return warm(loaded)


def fast_path_for(pyfunc: PyFuncModel) -> tuple[FastPath | None, str]:
    """Return a fast path when the model is scikit-learn with all-`double` named columns.

    Also say which path plain JSON rows will take, and why (MLflow's path unless the fast one
    computes the same function: the flavor's `predict`, on exactly the signature's columns).
    """
    import pandas as pd
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec

    schema = pyfunc.metadata.get_input_schema()
    python_function = pyfunc.metadata.flavors.get("python_function", {})
    if python_function.get("loader_module") != "mlflow.sklearn":
        return None, f"MLflow's path: the {_flavor(pyfunc.metadata.flavors)} flavor"
    if schema is None or not schema.has_input_names():
        return None, "MLflow's path: the signature names no input columns"
    predict_fn = python_function.get("predict_fn", "predict")
    if predict_fn != "predict":
        return None, f"MLflow's path: the model answers {predict_fn}"
    if pyfunc.model_config or (pyfunc.metadata.get_params_schema() is not None):
        return None, "MLflow's path: the model takes a config or params"
    columns = schema.inputs
    if not all(
        isinstance(column, ColSpec) and column.type == DataType.double and column.required
        for column in columns
    ):
        return None, "MLflow's path: not every input column is a required double"
    names = tuple(str(column.name) for column in columns)
    raw = pyfunc.get_raw_model()

    def predict(rows: np.ndarray) -> np.ndarray:
        result: np.ndarray = raw.predict(pd.DataFrame(rows, columns=list(names)))
        return result

    compiled = compile_estimator(raw)
    if compiled is not None and agrees_on_probe_rows(compiled, predict, len(names)):
        return FastPath(names, compiled, compiled=True), "fast path: compiled predictor"
    return FastPath(names, predict, compiled=False), "fast path: scikit-learn's predict"


def agrees_on_probe_rows(
    candidate: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray],
    width: int,
    tolerance: float = 1e-9,
) -> bool:
    """Whether two predictors agree on a spread of made-up rows, to `tolerance`."""
    import numpy as np

    rng = np.random.default_rng(0)
    probe = np.vstack([rng.uniform(-1e3, 1e3, (64, width)), rng.uniform(0, 100, (64, width))])
    try:
        return bool(np.allclose(candidate(probe), reference(probe), rtol=0, atol=tolerance))
    except (ValueError, TypeError, ArithmeticError):
        return False


def warm(model: LoadedModel) -> LoadedModel:
    """Predict the logged serving example through MLflow's own path, and the fast path too.

    The fast path is dropped (everything goes through MLflow's parser) if its answer differs.
    """
    from model_server.parsing import plain_rows
    from model_server.scoring import score_with_mlflow

    if model.serving_example is None:
        return replace(model, warm_up="no input example was logged; nothing to warm on")
    status, body, _ = score_with_mlflow(model, model.serving_example, "application/json")
    if status != 200:
        raise ModelLoadError(f"the model fails on its own input example: {body.decode()[:500]}")
    answered = json.loads(body)
    expected = answered.get("predictions") if isinstance(answered, dict) else answered
    fast = model.fast_path
    if fast is not None:
        rows = plain_rows(model.serving_example, fast.feature_names)
        agrees = rows is not None and same_answer(fast.predict(rows).tolist(), expected)
        if not agrees:
            return replace(
                model, fast_path=None, warm_up="warm; fast path disagreed, disabled",
                path="MLflow's path: the fast path answered the input example otherwise",
            )  # fmt: skip
    rows_seen = len(expected) if isinstance(expected, list | dict) else 1
    return replace(model, warm_up=f"warm: predicted {rows_seen} example row(s)")


def same_answer(left: Any, right: Any, tolerance: float = 1e-9) -> bool:
    """Whether two decoded answers match: numbers to `tolerance`, anything else exactly.

    Predictions may be numbers, labels, lists of them (several outputs, probabilities) or
    records; a comparison must not assume floats (string labels crashed the warm-up).
    """
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same_answer, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_answer(left[k], right[k]) for k in left)
    numbers = (int, float)
    if isinstance(left, numbers) and isinstance(right, numbers):
        if isinstance(left, bool) or isinstance(right, bool):
            return left is right
        both_nan = left != left and right != right
        return both_nan or abs(left - right) <= tolerance
    return bool(left == right)


def _flavor(flavors: dict[str, Any]) -> str:
    named = [name for name in flavors if name != "python_function"]
    return named[0] if named else "python_function"


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
