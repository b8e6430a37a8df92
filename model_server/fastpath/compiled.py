"""Compiled predictors: scikit-learn's arithmetic, without its per-call overhead.

scikit-learn validates its input and dispatches work on every call; on one row that is most
of the time. For the estimators below this module computes the expensive inner stage straight
on the fitted arrays (a matrix product, a walk of every tree at once: `fastpath/trees.py`,
an encoder's lookup table) and leaves everything after it to scikit-learn's own code: a
shallow copy of the estimator has that one stage (`decision_function`, `_raw_predict`,
`predict_proba` or `predict`) replaced, and its public method (`predict`, `predict_proba`,
`predict_log_proba`) is called as usual. So the class labels, links and probability formulas
stay scikit-learn's. Anything else returns None. The caller checks a compiled predictor
against MLflow's own path before using it (`model_server/fastpath/choose.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model_server.fastpath.trees import histogram_trees, refuse_non_finite, sklearn_trees

Step = Callable[[np.ndarray], np.ndarray]
METHODS = ("predict", "predict_proba", "predict_log_proba")


def compile_estimator(
    estimator: Any, method: str, columns: Sequence[str], text: frozenset[str] = frozenset()
) -> Step | None:
    """Return a function computing `estimator.<method>` on rows in `columns` order, or None.

    Rows are float64, or object arrays when some columns (`text`) hold strings; then only a
    pipeline whose first step is a ColumnTransformer that encodes them can be compiled.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if method not in METHODS:
        return None
    steps = [estimator]
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps if step != "passthrough"]
    if not steps:
        return None
    first: list[Step | None] = []
    if type(steps[0]) is ColumnTransformer:
        first = [_column_transformer(steps.pop(0), columns, text)]
    else:
        names = getattr(estimator, "feature_names_in_", None)
        if text or (names is not None and tuple(names) != tuple(columns)):
            return None
    transforms = [*first, *(_compile_transform(step) for step in steps[:-1])]
    final = _compile_final(steps[-1], method) if steps else None
    if final is None or any(step is None for step in transforms):
        return None
    return _chain([step for step in transforms if step is not None], final)


def _chain(steps: list[Step], final: Step) -> Step:
    def predict(rows: np.ndarray) -> np.ndarray:
        for step in steps:
            rows = step(rows)
        return final(rows)

    return predict


def _compile_final(estimator: Any, method: str) -> Step | None:
    if not hasattr(estimator, method):
        return None
    for compile_stage in (_linear, _logistic, _forest, _gradient_boosting, _histogram_boosting):
        fast = compile_stage(estimator)
        if fast is not None:
            bound: Step = getattr(fast, method)
            return bound
    return None


def _with_stage(estimator: Any, **stages: Callable[..., Any]) -> Any:
    """Copy `estimator` shallowly, with the named methods replaced by compiled ones."""
    fast = copy.copy(estimator)
    for name, stage in stages.items():
        setattr(fast, name, stage)
    return fast


def _linear(estimator: Any) -> Any:
    from sklearn.linear_model import Lasso, LinearRegression, Ridge

    if type(estimator) not in (LinearRegression, Ridge, Lasso) or np.ndim(estimator.coef_) != 1:
        return None
    coefficients = np.asarray(estimator.coef_, dtype=np.float64)
    intercept = float(estimator.intercept_)

    def predict(rows: np.ndarray) -> np.ndarray:
        refuse_non_finite(rows)
        result: np.ndarray = rows @ coefficients + intercept
        return result

    return _with_stage(estimator, predict=predict)


def _logistic(estimator: Any) -> Any:
    from sklearn.linear_model import LogisticRegression

    if type(estimator) is not LogisticRegression:
        return None
    coefficients = np.asarray(estimator.coef_, dtype=np.float64).T
    intercept = np.asarray(estimator.intercept_, dtype=np.float64)

    def decision_function(rows: np.ndarray) -> np.ndarray:
        refuse_non_finite(rows)
        scores: np.ndarray = rows @ coefficients + intercept
        return scores.ravel() if scores.shape[1] == 1 else scores

    return _with_stage(estimator, decision_function=decision_function)


def _forest(estimator: Any) -> Any:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    kind = type(estimator)
    regressor = kind in (RandomForestRegressor, ExtraTreesRegressor)
    classifier = kind in (RandomForestClassifier, ExtraTreesClassifier)
    # Several outputs of classes answer a list of arrays: left to scikit-learn.
    if not regressor and not (classifier and estimator.n_outputs_ == 1):
        return None
    table = sklearn_trees([tree.tree_ for tree in estimator.estimators_])
    # Closures hold only what they use: a regressor's predictor then carries no estimator, and
    # the serving process need not import scikit-learn (model_server/worker/handle.py).
    trees = len(estimator.estimators_)

    def mean(rows: np.ndarray) -> np.ndarray:
        total = _summed_in_order(np.zeros(1), table.leaf_values(rows))
        total /= trees  # then divided, as scikit-learn does
        return total

    if regressor:
        outputs = estimator.n_outputs_
        return _with_stage(
            estimator, predict=lambda rows: mean(rows)[:, 0] if outputs == 1 else mean(rows)
        )
    classes = len(estimator.classes_)
    return _with_stage(estimator, predict_proba=lambda rows: mean(rows)[:, :classes])


def _gradient_boosting(estimator: Any) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if type(estimator) not in (GradientBoostingClassifier, GradientBoostingRegressor):
        return None
    stages, per_stage = estimator.estimators_.shape
    table = sklearn_trees([tree.tree_ for tree in estimator.estimators_.ravel()])
    rate = estimator.learning_rate
    # The initial estimator's answer does not depend on the row (a constant or zero).
    baseline = estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_)))[0]

    def raw(rows: np.ndarray) -> np.ndarray:
        leaves = table.leaf_values(rows)[:, :, 0].reshape(len(rows), stages, per_stage)
        return _summed_in_order(baseline, rate * leaves)

    if type(estimator) is GradientBoostingRegressor:
        return _with_stage(estimator, predict=lambda rows: raw(rows).ravel())
    return _with_stage(
        estimator,
        decision_function=lambda rows: raw(rows).ravel() if per_stage == 1 else raw(rows),
    )


def _histogram_boosting(estimator: Any) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if type(estimator) not in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
        return None
    if getattr(estimator, "_preprocessor", None) is not None:
        return None
    per_iteration = estimator.n_trees_per_iteration_
    table = histogram_trees([p for iteration in estimator._predictors for p in iteration])
    if table is None:
        return None
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).ravel()

    def raw_predict(rows: np.ndarray) -> np.ndarray:
        leaves = table.leaf_values(rows)[:, :, 0].reshape(len(rows), -1, per_iteration)
        return _summed_in_order(baseline, leaves)

    return _with_stage(estimator, _raw_predict=raw_predict)


def _summed_in_order(start: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Sum `start` and `terms` (rows, steps, outputs) step by step: the ensembles' own order.

    scikit-learn adds each tree's (or stage's) values to a running total in turn; floating
    point addition is not associative, so the same order is what keeps the answers identical.
    A cumulative sum adds in exactly that order (a plain `sum` would add pairwise).
    """
    first = np.broadcast_to(start, (len(terms), 1, terms.shape[2]))
    total: np.ndarray = np.cumsum(np.concatenate([first, terms], axis=1), axis=1)[:, -1]
    return total


def _compile_transform(step: Any) -> Step | None:
    from sklearn.preprocessing import StandardScaler

    return _scaler(step) if type(step) is StandardScaler else None


def _scaler(step: Any) -> Step:
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def transform(rows: np.ndarray) -> np.ndarray:
        rows = np.array(rows, dtype=np.float64)
        if mean is not None:
            rows -= mean
        if scale is not None:
            rows /= scale
        return rows

    return transform


def _column_transformer(step: Any, columns: Sequence[str], text: frozenset[str]) -> Step | None:
    """Scalers, one-hot and ordinal encoders on columns named in the signature, as dense output.

    A sparse output is refused (the estimator after it would take another code path).
    """
    if step.sparse_output_:
        return None
    parts: list[Step] = []
    for _name, transformer, selected in step.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        if not isinstance(selected, list) or not all(c in columns for c in selected):
            return None
        where = [list(columns).index(c) for c in selected]
        numbers = not any(c in text for c in selected)
        part = _encoder(transformer, numbers)
        if part is None:
            return None
        parts.append(_select(where, part))

    def transform(rows: np.ndarray) -> np.ndarray:
        return np.hstack([part(rows) for part in parts])

    return transform


def _select(where: list[int], part: Step) -> Step:
    return lambda rows: part(rows[:, where])


def _encoder(transformer: Any, numbers: bool) -> Step | None:
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    if isinstance(transformer, str) and transformer == "passthrough" and numbers:
        return lambda rows: np.asarray(rows, dtype=np.float64)
    if type(transformer) is StandardScaler and numbers:
        return _scaler(transformer)
    if type(transformer) is OneHotEncoder and not numbers:
        return _one_hot(transformer)
    if type(transformer) is OrdinalEncoder and not numbers:
        return _ordinal(transformer)
    return None


def _lookups(encoder: Any) -> list[dict[str, int]] | None:
    """Each column's categories by position; None unless every category is a string."""
    tables = []
    for categories in encoder.categories_:
        if not all(isinstance(category, str) for category in categories):
            return None
        tables.append({category: index for index, category in enumerate(categories)})
    return tables


def _one_hot(encoder: Any) -> Step | None:
    if encoder.drop is not None or encoder.handle_unknown not in ("ignore", "error"):
        return None
    if getattr(encoder, "_infrequent_enabled", False):
        return None
    tables = _lookups(encoder)
    if tables is None:
        return None
    refuse_unknown = encoder.handle_unknown == "error"
    starts = np.concatenate([[0], np.cumsum([len(t) for t in tables])[:-1]]).astype(int)
    width = sum(len(t) for t in tables)

    def transform(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), width), dtype=encoder.dtype)
        for column, (table, start) in enumerate(zip(tables, starts, strict=True)):
            for row, value in enumerate(rows[:, column]):
                position = table.get(value)
                if position is not None:
                    out[row, start + position] = 1
                elif refuse_unknown:
                    raise ValueError(f"Found unknown category {value!r} during transform")
        return out

    return transform


def _ordinal(encoder: Any) -> Step | None:
    if encoder.handle_unknown not in ("use_encoded_value", "error"):
        return None
    tables = _lookups(encoder)
    if tables is None:
        return None
    unknown = encoder.unknown_value

    def code(table: dict[str, int], value: str) -> Any:
        if value in table:
            return table[value]
        if unknown is None:  # handle_unknown="error"
            raise ValueError(f"Found unknown category {value!r} during transform")
        return unknown

    def transform(rows: np.ndarray) -> np.ndarray:
        out = np.empty(rows.shape, dtype=encoder.dtype)
        for column, table in enumerate(tables):
            out[:, column] = [code(table, value) for value in rows[:, column]]
        return out

    return transform


__all__ = ["METHODS", "Step", "compile_estimator"]
