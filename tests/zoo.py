"""A zoo of MLflow models of many kinds, and the payloads each kind is asked.

Shared by `tests/test_model_zoo.py` (both engines must answer every payload alike) and
`bench/model_server.py` (both engines measured on every kind). Every model is fitted here on
small made-up data and saved to a folder (a path URI, which both engines serve), with or
without an input example: the example is what the native engine warms on, and its absence is
the case a warm-up cannot compare.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NUMBERS = ["a", "b", "c"]
TEXTS = ["colour", "size"]


def numeric_frame(rows: int = 120) -> pd.DataFrame:
    """Three double columns, a to c, uniform on [0, 10)."""
    rng = np.random.default_rng(3)
    return pd.DataFrame(rng.uniform(0, 10, (rows, 3)), columns=NUMBERS)


def mixed_frame(rows: int = 120) -> pd.DataFrame:
    """The numeric frame with two text columns, each a handful of categories."""
    rng = np.random.default_rng(4)
    frame = numeric_frame(rows)
    frame["colour"] = rng.choice(["red", "green", "blue"], rows)
    frame["size"] = rng.choice(["S", "M", "L", "XL"], rows)
    return frame


def _signed(estimator: Any, frame: pd.DataFrame, predict_fn: str = "predict") -> Any:
    from mlflow.models import infer_signature

    return infer_signature(frame, getattr(estimator, predict_fn)(frame))


def _sklearn(
    folder: Path, estimator: Any, frame: pd.DataFrame, target: Any, example: bool, **options: Any
) -> None:
    import mlflow.sklearn

    estimator.fit(frame, target)
    signature = _signed(estimator, frame, options.get("pyfunc_predict_fn", "predict"))
    mlflow.sklearn.save_model(
        estimator, folder, signature=signature, input_example=frame.head(3) if example else None,
        serialization_format="cloudpickle", **options,
    )  # fmt: skip


def _pass_fail(frame: pd.DataFrame) -> np.ndarray:
    return np.where(frame["a"] + frame["b"] > 10, "pass", "fail")


def _three_classes(frame: pd.DataFrame) -> np.ndarray:
    return np.digitize(frame["a"] - frame["c"], [-3.0, 3.0])


def _product(frame: pd.DataFrame) -> pd.Series:
    return frame["a"] * frame["b"] - frame["c"]


def _labels(folder: Path, example: bool, **options: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = numeric_frame()
    _sklearn(folder, LogisticRegression(), frame, _pass_fail(frame), example, **options)


def _two_outputs(folder: Path, example: bool) -> None:
    from sklearn.ensemble import RandomForestRegressor

    frame = numeric_frame()
    two = np.column_stack([frame["a"] * 2, frame["b"] - frame["c"]])
    _sklearn(folder, RandomForestRegressor(n_estimators=5, random_state=0), frame, two, example)


def _forest_classifier(folder: Path, example: bool) -> None:
    from sklearn.ensemble import RandomForestClassifier

    frame = numeric_frame()
    forest = RandomForestClassifier(n_estimators=10, random_state=0)
    _sklearn(folder, forest, frame, _three_classes(frame), example)


def _gradient_boosting(folder: Path, example: bool) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    frame = numeric_frame()
    boosted = GradientBoostingClassifier(n_estimators=20, random_state=0)
    _sklearn(folder, boosted, frame, _pass_fail(frame), example, pyfunc_predict_fn="predict_proba")


def _hist_gradient_boosting(folder: Path, example: bool) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    frame = numeric_frame()
    boosted = HistGradientBoostingRegressor(max_iter=20, random_state=0)
    _sklearn(folder, boosted, frame, _product(frame), example)


def _text_pipeline(folder: Path, example: bool) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    frame = mixed_frame()
    encode = ColumnTransformer([
        ("numbers", StandardScaler(), NUMBERS),
        ("colour", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ("size", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["size"]),
    ])  # fmt: skip
    target = _product(frame) + (frame["colour"] == "red") * 5 + frame["size"].str.len()
    _sklearn(folder, Pipeline([("encode", encode), ("fit", Ridge())]), frame, target, example)


def _tensor(folder: Path, example: bool) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    rows = numeric_frame().to_numpy()
    ridge = Ridge().fit(rows, rows.sum(axis=1))
    mlflow.sklearn.save_model(
        ridge, folder, signature=infer_signature(rows, ridge.predict(rows)),
        input_example=rows[:3] if example else None, serialization_format="cloudpickle",
    )  # fmt: skip


def _no_signature(folder: Path, example: bool) -> None:
    import mlflow.sklearn
    from sklearn.linear_model import Ridge

    frame = numeric_frame()
    ridge = Ridge().fit(frame, _product(frame))
    # An input example would infer a signature; a model without one has neither.
    del example
    mlflow.sklearn.save_model(ridge, folder, serialization_format="cloudpickle")


def _xgboost(folder: Path, example: bool) -> None:
    import mlflow.xgboost
    import xgboost

    frame = numeric_frame()
    boosted = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(frame, _product(frame))
    mlflow.xgboost.save_model(
        boosted, folder, signature=_signed(boosted, frame),
        input_example=frame.head(3) if example else None,
    )  # fmt: skip


def _lightgbm(folder: Path, example: bool) -> None:
    import lightgbm
    import mlflow.lightgbm

    frame = numeric_frame()
    boosted = lightgbm.LGBMClassifier(n_estimators=20, min_child_samples=5, verbose=-1)
    boosted.fit(frame, _three_classes(frame))
    mlflow.lightgbm.save_model(
        boosted, folder, signature=_signed(boosted, frame),
        input_example=frame.head(3) if example else None,
    )  # fmt: skip


PYTHON_MODELS = {
    "frame": """
        import mlflow.pyfunc
        import pandas as pd
        from mlflow.models import set_model


        class SumAndSize(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                total = model_input["a"] + model_input["b"] + model_input["c"]
                return pd.DataFrame({"total": total, "big": total > 15})


        set_model(SumAndSize())
    """,
    "params": """
        import mlflow.pyfunc
        from mlflow.models import set_model


        class Scaled(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                params = params or {}
                return (model_input["a"] * params.get("scale", 1.0)).round(params.get("digits", 6))


        set_model(Scaled())
    """,
    "strings": """
        import mlflow.pyfunc
        from mlflow.models import set_model


        class Shout(mlflow.pyfunc.PythonModel):
            def predict(self, model_input: list[str], params=None) -> list[str]:
                return [text.upper() + "!" for text in model_input]


        set_model(Shout())
    """,
    "bytes": """
        import mlflow.pyfunc
        from mlflow.models import set_model


        class ByteLengths(mlflow.pyfunc.PythonModel):
            def predict(self, model_input: list[bytes], params=None) -> list[int]:
                return [len(item) for item in model_input]


        set_model(ByteLengths())
    """,
    "datetimes": """
        from datetime import datetime

        import mlflow.pyfunc
        from mlflow.models import set_model


        class Weekday(mlflow.pyfunc.PythonModel):
            def predict(self, model_input: list[datetime], params=None) -> list[str]:
                return [moment.strftime("%A %H:%M") for moment in model_input]


        set_model(Weekday())
    """,
}


def _python(name: str, example_value: Any, **options: Any) -> Callable[[Path, bool], None]:
    def save(folder: Path, example: bool) -> None:
        import mlflow.pyfunc

        code = folder.parent / f"{folder.name}-{name}.py"
        code.write_text(textwrap.dedent(PYTHON_MODELS[name]))
        mlflow.pyfunc.save_model(
            folder, python_model=str(code), input_example=example_value if example else None,
            **options,
        )  # fmt: skip

    return save


def _framed_python(name: str) -> Callable[[Path, bool], None]:
    """A model from `PYTHON_MODELS` on the numeric frame, signed by its own answer."""

    def save(folder: Path, example: bool) -> None:
        import mlflow.pyfunc
        from mlflow.models import infer_signature

        code = folder.parent / f"{folder.name}-{name}.py"
        code.write_text(textwrap.dedent(PYTHON_MODELS[name]))
        frame = numeric_frame()
        params = {"scale": 1.0, "digits": 6} if name == "params" else None
        namespace: dict[str, Any] = {}
        exec(compile(code.read_text(), str(code), "exec"), namespace)  # noqa: S102
        answer = _model_in(namespace).predict(None, frame, params)
        input_example: Any = None
        if example:
            input_example = (frame.head(3), params) if params else frame.head(3)
        with warnings.catch_warnings():  # MLflow's advice to log an example, when there is none
            warnings.filterwarnings("ignore", ".*An input example was not provided")
            mlflow.pyfunc.save_model(
                folder, python_model=str(code), signature=infer_signature(frame, answer, params),
                input_example=input_example,
            )  # fmt: skip

    return save


def _model_in(namespace: dict[str, Any]) -> Any:
    import mlflow.pyfunc

    (model,) = [
        value()
        for value in namespace.values()
        if isinstance(value, type)
        and issubclass(value, mlflow.pyfunc.PythonModel)
        and value is not mlflow.pyfunc.PythonModel
    ]
    return model


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = frame.to_dict(orient="records")
    return records


def _formats(frame: pd.DataFrame) -> dict[str, Any]:
    """The same rows in each of MLflow's JSON input formats."""
    columns = list(frame.columns)
    return {
        "records": {"dataframe_records": _records(frame)},
        "split": {"dataframe_split": {"columns": columns, "data": frame.to_numpy().tolist()}},
        "instances": {"instances": _records(frame)},
        "columns": {"inputs": {name: frame[name].tolist() for name in columns}},
    }


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


NUMERIC_ROWS = numeric_frame().tail(4)
MIXED_ROWS = mixed_frame().tail(4)
NUMERIC = {
    **_formats(NUMERIC_ROWS),
    "single-row": {"dataframe_records": _records(NUMERIC_ROWS.head(1))},
    "params-unasked": {"dataframe_records": _records(NUMERIC_ROWS), "params": {"scale": 2.0}},
    "missing-column": {"dataframe_records": [{"a": 1.0, "b": 2.0}]},
    "text-in-a-number": {"dataframe_records": [{"a": "x", "b": 2.0, "c": 3.0}]},
    "null-in-a-number": {"dataframe_records": [{"a": None, "b": 2.0, "c": 3.0}]},
    "no-rows": {"dataframe_records": []},
    "unknown-format": {"rows": [[1.0, 2.0, 3.0]]},
}
GOOD_NUMERIC = {"records", "split", "instances", "columns", "single-row", "params-unasked"}
MIXED = {
    **_formats(MIXED_ROWS),
    "single-row": {"dataframe_records": _records(MIXED_ROWS.head(1))},
    "unseen-category": {"dataframe_records": [{**_records(MIXED_ROWS)[0], "colour": "mauve"}]},
    "number-in-a-text": {"dataframe_records": [{**_records(MIXED_ROWS)[0], "size": 3}]},
    "missing-column": {"dataframe_records": [{"a": 1.0, "b": 2.0, "c": 3.0, "size": "M"}]},
}
GOOD_MIXED = {"records", "split", "instances", "columns", "single-row", "unseen-category"}
TENSOR = {
    "instances": {"instances": NUMERIC_ROWS.to_numpy().tolist()},
    "single-row": {"inputs": NUMERIC_ROWS.head(1).to_numpy().tolist()},
    "inputs": {"inputs": NUMERIC_ROWS.to_numpy().tolist()},
    "wrong-width": {"inputs": [[1.0, 2.0]]},
    "records": {"dataframe_records": _records(NUMERIC_ROWS)},
}
PARAMS = {
    **NUMERIC,
    "params": {"dataframe_records": _records(NUMERIC_ROWS), "params": {"scale": 2.5}},
    "params-digits": {"dataframe_split": _formats(NUMERIC_ROWS)["split"]["dataframe_split"],
                      "params": {"scale": 3.0, "digits": 1}},
    "params-wrong-type": {"dataframe_records": _records(NUMERIC_ROWS), "params": {"scale": "x"}},
    "params-unknown": {"dataframe_records": _records(NUMERIC_ROWS), "params": {"colour": "red"}},
}  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """A model kind: how to save it, the JSON payloads it is asked, and which are good input.

    Good payloads (and `csv`, a CSV body of the kind's rows, when CSV suits its input) must
    be answered with predictions. The rest are bad or doubtful input (a null in a number
    column, a number in a text column) whose fate depends on the model and on MLflow's
    coercions: the engines must only answer them alike.
    """

    save: Callable[[Path, bool], None]
    payloads: dict[str, Any]
    good: frozenset[str]
    csv: bytes | None = None

    def bodies(self) -> dict[str, tuple[bytes, str]]:
        """Every payload as a request body with its content type."""
        bodies = {
            name: (json.dumps(payload).encode(), "application/json")
            for name, payload in self.payloads.items()
        }
        if self.csv is not None:
            bodies["csv"] = (self.csv, "text/csv")
        bodies["not-json"] = (b'{"dataframe_records": [', "application/json")
        bodies["text-plain"] = (bodies["single-row"][0], "text/plain")  # 415
        return bodies

    def single_row(self) -> bytes:
        """A one-row JSON body of the kind, for the benchmark."""
        return json.dumps(self.payloads["single-row"]).encode()

    def must_answer(self, payload: str) -> bool:
        """Whether the payload is good input for the kind (CSV always is, when asked)."""
        return payload in self.good or payload == "csv"


def _numeric(save: Callable[[Path, bool], None]) -> Kind:
    return Kind(save, NUMERIC, frozenset(GOOD_NUMERIC), _csv(NUMERIC_ROWS))


def _listed(values: list[Any], bad: list[Any]) -> dict[str, Any]:
    return {"list": {"inputs": values}, "single-row": {"inputs": values[:1]},
            "bad-item": {"inputs": bad}}  # fmt: skip


KINDS: dict[str, Kind] = {
    "string-labels": _numeric(_labels),
    "predict-proba": _numeric(lambda f, e: _labels(f, e, pyfunc_predict_fn="predict_proba")),
    "predict-log-proba": _numeric(
        lambda f, e: _labels(f, e, pyfunc_predict_fn="predict_log_proba")
    ),
    "two-outputs": _numeric(_two_outputs),
    "forest-classifier": _numeric(_forest_classifier),
    "gradient-boosting": _numeric(_gradient_boosting),
    "hist-gradient-boosting": _numeric(_hist_gradient_boosting),
    "text-pipeline": Kind(_text_pipeline, MIXED, frozenset(GOOD_MIXED), _csv(MIXED_ROWS)),
    "frame-out": _numeric(_framed_python("frame")),
    "params": Kind(
        _framed_python("params"),
        PARAMS,
        frozenset(GOOD_NUMERIC | {"params", "params-digits", "params-unknown"}),
        _csv(NUMERIC_ROWS),
    ),
    "tensor": Kind(_tensor, TENSOR, frozenset({"instances", "inputs", "single-row"})),
    # Without a signature MLflow hands `instances` and `inputs` rows over as columnless data.
    "no-signature": Kind(
        _no_signature,
        NUMERIC,
        frozenset(GOOD_NUMERIC - {"instances", "columns"}),
        _csv(NUMERIC_ROWS),
    ),
    "type-hinted-strings": Kind(
        _python("strings", ["hello", "zoo"]),
        _listed(["ab", "c"], [1, 2]),
        frozenset({"list", "single-row"}),
    ),
    "type-hinted-bytes": Kind(
        _python("bytes", [b"abc", b"de"]),
        _listed(["aGVsbG8=", ""], [1, 2]),
        frozenset({"list", "single-row"}),
    ),
    "type-hinted-datetimes": Kind(
        _python("datetimes", ["2026-12-01T10:30:00"]),
        _listed(["2026-12-01T10:30:00", "2024-02-29T23:59:59"], ["not a date"]),
        frozenset({"list", "single-row"}),
    ),
    "xgboost": _numeric(_xgboost),
    "lightgbm": _numeric(_lightgbm),
}
