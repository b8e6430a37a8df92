"""Compiled predictors against scikit-learn's own methods, on rows inside and far outside the data.

A compiled predictor replaces only the expensive inner stage of an estimator (a matrix
product, every tree walked at once, an encoder's lookup); these tests hold it to the library's
answer, exactly for trees (the same float32 comparisons, the same order of additions) and to
1e-9 for matrix products, on every method MLflow's `pyfunc_predict_fn` can name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from model_server.fastpath.compiled import METHODS, compile_estimator
from tests.zoo import NUMBERS, TEXTS, mixed_frame, numeric_frame


def _targets(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "regression": frame["a"] * frame["b"] - frame["c"],
        "two-classes": np.where(frame["a"] + frame["b"] > 10, "pass", "fail"),
        "three-classes": np.digitize(frame["a"] - frame["c"], [-3.0, 3.0]),
        "two-outputs": np.column_stack([frame["a"] * 2, frame["b"] - frame["c"]]),
    }


def _estimators() -> list[tuple[str, Any, str]]:
    from sklearn import ensemble, linear_model

    return [
        ("linear", linear_model.LinearRegression(), "regression"),
        ("ridge", linear_model.Ridge(), "regression"),
        ("logistic-2", linear_model.LogisticRegression(), "two-classes"),
        ("logistic-3", linear_model.LogisticRegression(), "three-classes"),
        ("forest", ensemble.RandomForestRegressor(n_estimators=30, random_state=0), "regression"),
        ("forest-2-outputs", ensemble.RandomForestRegressor(n_estimators=10, random_state=0),
         "two-outputs"),
        ("extra-trees", ensemble.ExtraTreesRegressor(n_estimators=10, random_state=0),
         "regression"),
        ("forest-classifier", ensemble.RandomForestClassifier(n_estimators=30, random_state=0),
         "three-classes"),
        ("extra-trees-classifier", ensemble.ExtraTreesClassifier(n_estimators=10, random_state=0),
         "two-classes"),
        ("boosting", ensemble.GradientBoostingRegressor(n_estimators=40, random_state=0),
         "regression"),
        ("boosting-2", ensemble.GradientBoostingClassifier(n_estimators=40, random_state=0),
         "two-classes"),
        ("boosting-3", ensemble.GradientBoostingClassifier(n_estimators=20, random_state=0),
         "three-classes"),
        ("histogram", ensemble.HistGradientBoostingRegressor(max_iter=40, random_state=0),
         "regression"),
        ("histogram-2", ensemble.HistGradientBoostingClassifier(max_iter=20, random_state=0),
         "two-classes"),
        ("histogram-3", ensemble.HistGradientBoostingClassifier(max_iter=20, random_state=0),
         "three-classes"),
    ]  # fmt: skip


def _probe(frame: pd.DataFrame) -> pd.DataFrame:
    """The training rows, and rows well beyond their range."""
    rng = np.random.default_rng(1)
    wide = pd.DataFrame(rng.uniform(-20, 30, (300, len(NUMBERS))), columns=NUMBERS)
    return pd.concat([frame[NUMBERS], wide], ignore_index=True)


def _same(got: np.ndarray, expected: np.ndarray, exact: bool) -> bool:
    if got.dtype.kind not in "fc":
        return got.shape == expected.shape and bool(np.array_equal(got, expected))
    if exact:
        return got.shape == expected.shape and bool(np.array_equal(got, expected, equal_nan=True))
    return bool(np.allclose(got, expected, rtol=0, atol=1e-9, equal_nan=True))


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize(
    ("name", "estimator", "target"), _estimators(), ids=[name for name, _, _ in _estimators()]
)
def test_a_compiled_predictor_answers_as_the_estimator(
    name: str, estimator: Any, target: str
) -> None:
    frame = numeric_frame()
    estimator.fit(frame, _targets(frame)[target])
    probe = _probe(frame)
    compiled_any = False
    for method in METHODS:
        if not hasattr(estimator, method):
            continue
        compiled = compile_estimator(estimator, method, tuple(NUMBERS))
        assert compiled is not None, (name, method)
        compiled_any = True
        exact = not name.startswith(("linear", "ridge", "logistic"))
        expected = getattr(estimator, method)(probe)
        got = compiled(probe.to_numpy())
        assert _same(got, expected, exact), (name, method)
        # One row at a time, as single requests arrive.
        assert _same(compiled(probe.to_numpy()[:1]), expected[:1], exact), (name, method)
    assert compiled_any


def _text_pipeline(**one_hot: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    encode = ColumnTransformer([
        ("numbers", StandardScaler(), NUMBERS),
        ("colour", OneHotEncoder(**one_hot), ["colour"]),
        ("size", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["size"]),
    ])  # fmt: skip
    return Pipeline([("encode", encode), ("fit", HistGradientBoostingRegressor(max_iter=20))])


def test_a_pipeline_encoding_text_columns_compiles_to_the_same_answers() -> None:
    frame = mixed_frame()
    columns = tuple(frame.columns)
    pipeline = _text_pipeline(handle_unknown="ignore").fit(frame, frame["a"] * frame["b"])
    probe = frame.copy()
    probe.loc[::7, "colour"] = "mauve"  # categories never seen in training
    probe.loc[::5, "size"] = "XXL"
    compiled = compile_estimator(pipeline, "predict", columns, frozenset(TEXTS))
    assert compiled is not None
    rows = probe.to_numpy(dtype=object)
    assert np.array_equal(compiled(rows), pipeline.predict(probe))


def test_an_unknown_category_the_encoder_refuses_is_refused() -> None:
    frame = mixed_frame()
    pipeline = _text_pipeline(handle_unknown="error").fit(frame, frame["a"])
    compiled = compile_estimator(pipeline, "predict", tuple(frame.columns), frozenset(TEXTS))
    assert compiled is not None
    rows = frame.head(2).to_numpy(dtype=object)
    rows[1, list(frame.columns).index("colour")] = "mauve"
    with pytest.raises(ValueError, match="unknown category"):
        compiled(rows)


def test_what_cannot_be_compiled_is_left_to_the_library() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    frame = numeric_frame()
    target = frame["a"]
    columns = tuple(NUMBERS)
    assert compile_estimator(make_pipeline(MinMaxScaler(), Ridge()).fit(frame, target),
                             "predict", columns) is None  # fmt: skip
    # Columns in another order than the estimator was fitted on.
    assert compile_estimator(Ridge().fit(frame, target), "predict", columns[::-1]) is None
    categorical = frame.assign(a=pd.Categorical((frame["a"] > 5).map({True: "x", False: "y"})))
    boosted = HistGradientBoostingRegressor(max_iter=5, categorical_features="from_dtype")
    assert compile_estimator(boosted.fit(categorical, target), "predict", columns) is None
    mixed = mixed_frame()
    dropped = _text_pipeline(drop="first").fit(mixed, mixed["a"])
    assert compile_estimator(dropped, "predict", tuple(mixed.columns), frozenset(TEXTS)) is None
    assert compile_estimator(Ridge().fit(frame, target), "score", columns) is None
