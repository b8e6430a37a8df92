"""MLflow's own request handling, called directly: the reference path for every request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from contracts.errors import error_body

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel
    from mlflow.types import Schema

JSON = "application/json"


class ScorableModel(Protocol):
    """What MLflow's path needs of a loaded model (`loading.LoadedModel` is one)."""

    @property
    def pyfunc(self) -> PyFuncModel:
        """The model as MLflow loaded it."""

    @property
    def input_schema(self) -> Schema | None:
        """The signature's inputs, which MLflow enforces on every request."""


class Scored(NamedTuple):
    """An answer: HTTP status, body and its content type."""

    status: int
    body: bytes
    content_type: str


def score_with_mlflow(model: ScorableModel, body: bytes, content_type: str) -> Scored:
    """Answer a request exactly as `mlflow models serve` does.

    Runs MLflow's `invocations` (parsing, schema enforcement, predict, serialization) and
    turns its exceptions into its error bodies. Deliberate differences: a body nested too
    deeply for Python's JSON parser, and input that crashes MLflow's parsing, are 400s here
    where MLflow answers 500.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations

    try:
        answer = invocations(body, content_type, model.pyfunc, model.input_schema)
    except MlflowException as error:
        return Scored(error.get_http_status_code(), error.serialize_as_json().encode(), JSON)
    except RecursionError:
        message = "the JSON body is nested too deeply"
        return Scored(400, error_body("BAD_REQUEST", message), JSON)
    # MLflow's parsing lets some malformed inputs crash it (a 500 there): it is the input's fault.
    except (TypeError, ValueError, KeyError) as error:
        message = f"the input cannot be read as a data frame: {type(error).__name__}: {error}"
        return Scored(400, error_body("BAD_REQUEST", message[:500]), JSON)
    response = answer.response
    encoded = response.encode() if isinstance(response, str) else bytes(response)
    return Scored(answer.status, encoded, _as_sent(answer.mimetype))


def _as_sent(mimetype: str) -> str:
    """Return the Content-Type MLflow's server sends for `mimetype`.

    Its FastAPI (Starlette) `Response` adds `; charset=utf-8` to a `text/` media type that
    names no charset: MLflow's 415s are `text/plain; charset=utf-8` on the wire.
    """
    if mimetype.startswith("text/") and "charset=" not in mimetype:
        return f"{mimetype}; charset=utf-8"
    return mimetype


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
        return left == right or both_nan or abs(left - right) <= tolerance
    return bool(left == right)
