"""The fast path: plain JSON rows predicted straight on the model, when that is MLflow's answer.

MLflow's path (parse into pandas, enforce the schema, call the flavor's wrapper, serialize) is
the reference. A fast path skips all of that for plain rows, so it is taken only when it
computes the same function: the flavor's own `predict_fn`, on exactly the signature's
columns, with the answer serialized as MLflow does. Candidates are tried in order (a compiled
predictor, then the library's own method on the rows) and each is checked at start against
MLflow's path on the logged input example and on rows drawn from the signature; the first
that agrees on every row is kept, or none (and `/metadata` says why).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from model_server.fastpath.compiled import compile_estimator
from model_server.fastpath.parsing import ColumnKind, Columns, plain_rows
from model_server.model.scoring import JSON, ScorableModel, same_answer, score_with_mlflow

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.pyfunc import PyFuncModel

log = logging.getLogger("model_server")

Predict = Callable[[np.ndarray], np.ndarray]
Probes = Sequence[tuple[np.ndarray, Any]]
"""Rows a fast path is checked on, each with MLflow's decoded answer (None: MLflow refused)."""
SIGNATURE_KINDS: dict[str, ColumnKind] = {
    "double": "number", "long": "integer", "integer": "integer", "string": "text",
}  # fmt: skip
"""Signature types a fast path reads. float (float32) is not: MLflow narrows those values."""
LIBRARY_FLAVORS = {"mlflow.sklearn": "scikit-learn", "mlflow.xgboost": "XGBoost",
                   "mlflow.lightgbm": "LightGBM"}  # fmt: skip
DRAWN_ROWS = 64


@dataclass(frozen=True)
class FastPath:
    """How plain rows are read and predicted, bypassing MLflow's parser."""

    columns: Columns
    predict: Predict
    compiled: bool
    """Whether `predict` is a compiled predictor rather than the library's own method."""
    portable: bool
    """Whether it needs neither MLflow nor pandas (arrays in, arrays out), so that a serving
    process holding only this can answer plain rows (model_server/worker/handle.py)."""


class ProbedModel(ScorableModel, Protocol):
    """What choosing a fast path needs of a loaded model (`loading.LoadedModel` is one)."""

    @property
    def serving_example(self) -> bytes | None:
        """The logged input example as a request body, the first rows probed."""


def answer_body(predictions: np.ndarray) -> bytes:
    """Serialize predictions as MLflow does for an array: `{"predictions": [...]}`."""
    return json.dumps({"predictions": predictions.tolist()}).encode()


def choose_fast_path(model: ProbedModel) -> tuple[FastPath | None, str, Probes]:
    """Return the fast path that answers as MLflow's path does, or None; why; and the probes."""
    pyfunc = model.pyfunc
    found = _columns_and_candidates(pyfunc)
    if isinstance(found, str):
        return None, f"MLflow's path: {found}", ()
    columns, candidates = found
    if not candidates:
        return None, "MLflow's path: no fast predictor for this model", ()
    probes = [(rows, _mlflow_answer(model, columns, rows)) for rows in _probe_rows(columns, model)]
    verdict: str | None = None
    for how, fast in candidates:
        verdict = disagreement_with_mlflow(fast, probes)
        if verdict is None:
            return fast, f"fast path: {how}", probes
    return None, f"MLflow's path: {verdict}", probes


Candidates = list[tuple[str, FastPath]]
"""Fast paths to try in order, each with how `/metadata` names it."""


def _columns_and_candidates(pyfunc: PyFuncModel) -> tuple[Columns, Candidates] | str:
    """Return the columns plain rows must have and the predictors to try, or why there are none."""
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec

    metadata = pyfunc.metadata
    python_function = metadata.flavors.get("python_function", {})
    loader = python_function.get("loader_module")
    if loader not in LIBRARY_FLAVORS:
        return f"the {flavor_name(metadata.flavors)} flavor"
    schema = metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return "the signature names no input columns"
    if pyfunc.model_config or metadata.get_params_schema() is not None:
        return "the model takes a config or params"
    specs = schema.inputs
    if not all(isinstance(spec, ColSpec) and spec.required for spec in specs):
        return "not every input is a required column"
    kinds = [SIGNATURE_KINDS.get(spec.type.name) if isinstance(spec.type, DataType) else None
             for spec in specs]  # fmt: skip
    if any(kind is None for kind in kinds):
        return "a column's type is not a number, a whole number or text"
    columns = Columns(tuple(str(spec.name) for spec in specs), tuple(k for k in kinds if k))
    method = python_function.get("predict_fn", "predict")
    raw = pyfunc.get_raw_model()
    if loader == "mlflow.sklearn":
        return columns, _sklearn_candidates(raw, method, columns)
    if method != "predict" or not columns.numeric or not hasattr(raw, "predict"):
        return f"the model answers {method} or reads text"
    library = f"{LIBRARY_FLAVORS[loader]}'s predict"
    if loader == "mlflow.xgboost":
        return columns, [(library, FastPath(columns, raw.predict, False, True))]
    on_array = FastPath(columns, _on_unnamed_array(raw.predict), False, True)
    on_frame = FastPath(columns, _on_frame(raw.predict, columns), False, False)
    return columns, [(library, on_array), (f"{library} on a data frame", on_frame)]


def _sklearn_candidates(raw: Any, method: str, columns: Columns) -> Candidates:
    own = getattr(raw, method, None)
    if own is None:
        return []
    candidates: Candidates = []
    compiled = compile_estimator(raw, method, columns.names, columns.text)
    if compiled is not None:
        candidates.append((f"compiled {method}", FastPath(columns, compiled, True, True)))
    frame = FastPath(columns, _on_frame(own, columns), False, False)
    candidates.append((f"scikit-learn's {method}", frame))
    return candidates


def _on_unnamed_array(method: Callable[[Any], Any]) -> Predict:
    """Call a library's own method on the rows as an array, without its column-names warning.

    A model fitted on a data frame warns on every array that it has no column names; the
    columns are the signature's, in its order (the start-up check shows the answers agree).
    """

    def predict(rows: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            result: np.ndarray = method(rows)
        return result

    return predict


def _on_frame(method: Callable[[Any], Any], columns: Columns) -> Predict:
    """Call a library's own method on the data frame MLflow would hand it."""

    def predict(rows: np.ndarray) -> np.ndarray:
        result: np.ndarray = method(frame_of(rows, columns))
        return result

    return predict


def frame_of(rows: np.ndarray, columns: Columns) -> pd.DataFrame:
    """Build the data frame MLflow's schema enforcement would hand the model from the rows."""
    import pandas as pd

    dtypes = {"number": np.float64, "integer": np.int64}
    return pd.DataFrame({
        name: rows[:, index].astype(dtypes[kind]) if kind in dtypes else list(rows[:, index])
        for index, (name, kind) in enumerate(zip(columns.names, columns.kinds, strict=True))
    })  # fmt: skip


def _probe_rows(columns: Columns, model: ProbedModel) -> list[np.ndarray]:
    """Return the input example's rows, then rows drawn from the signature.

    Numbers are drawn across and well beyond the example's range (or [-1000, 1000] without an
    example), whole numbers likewise, text from the example's values and strings no model saw.
    """
    example = plain_rows(model.serving_example, columns) if model.serving_example else None
    rng = np.random.default_rng(0)
    drawn: list[list[Any]] = []
    for index, kind in enumerate(columns.kinds):
        seen = list(example[:, index]) if example is not None else []
        if kind == "text":
            choices = sorted({str(value) for value in seen} | {"", "unseen-category"})
            drawn.append([str(value) for value in rng.choice(choices, DRAWN_ROWS)])
            continue
        low, high = (min(seen), max(seen)) if seen else (-1000.0, 1000.0)
        span = max(float(high) - float(low), 1.0)
        low, high = float(low) - span, float(high) + span
        if kind == "integer":
            drawn.append([int(v) for v in rng.integers(int(low), int(high) + 1, DRAWN_ROWS)])
        else:
            drawn.append([float(v) for v in rng.uniform(low, high, DRAWN_ROWS)])
    rows = np.array(list(zip(*drawn, strict=True)), dtype=np.float64 if columns.numeric else object)
    probes = [rows, rows[:1], rows[1:2]]
    return [example, *probes] if example is not None else probes


def _mlflow_answer(model: ProbedModel, columns: Columns, rows: np.ndarray) -> Any:
    """Return MLflow's decoded answer to the rows as a `dataframe_split` body, or None."""
    body = {"dataframe_split": {"columns": list(columns.names), "data": rows.tolist()}}
    reference = score_with_mlflow(model, json.dumps(body).encode(), JSON)
    return json.loads(reference.body) if reference.status == 200 else None


def disagreement_with_mlflow(fast: FastPath, probes: Probes) -> str | None:
    """Say how the fast path differs from MLflow's answers to the probes; None if it does not.

    A fast path that raises hands the request to MLflow's path, so refusing is agreement;
    at least one probe must be answered by both for the fast path to be trusted at all.
    """
    compared = 0
    for rows, expected in probes:
        try:
            answer = json.loads(answer_body(fast.predict(rows)))
        # Whatever the fast path raises, the request would go to MLflow's path instead.
        except Exception:
            log.debug("the fast path refused a probe", exc_info=True)
            continue
        if expected is None or not same_answer(answer, expected):
            return "the fast path answered otherwise on the example or drawn rows"
        compared += 1
    return None if compared else "the fast path refused every example and drawn row"


def flavor_name(flavors: dict[str, Any]) -> str:
    """Name the model's own flavor (`sklearn`, `xgboost`), or `python_function` if none."""
    named = [name for name in flavors if name != "python_function"]
    return named[0] if named else "python_function"
