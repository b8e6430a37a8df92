"""The model kinds `mlcanary train` offers, each a scikit-learn Pipeline over the features."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


class ModelKind(StrEnum):
    """The kinds of regressor that can be trained."""

    linear = "linear"
    random_forest = "random_forest"
    gradient_boosting = "gradient_boosting"
    decision_tree = "decision_tree"
    """Unpruned: it answers its training rows' labels exactly (the labels demo's models)."""


def build_pipeline(kind: ModelKind, seed: int) -> Pipeline:
    """Return an unfitted Pipeline of the given kind, seeded for reproducible fits."""
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    if kind is ModelKind.linear:
        return Pipeline([("scale", StandardScaler()), ("regressor", LinearRegression())])
    if kind is ModelKind.random_forest:
        forest = RandomForestRegressor(n_estimators=100, max_depth=10, random_state=seed, n_jobs=1)
        return Pipeline([("regressor", forest)])
    if kind is ModelKind.decision_tree:
        return Pipeline([("regressor", DecisionTreeRegressor(random_state=seed))])
    boosting = GradientBoostingRegressor(
        n_estimators=200, max_depth=3, learning_rate=0.05, random_state=seed
    )
    return Pipeline([("regressor", boosting)])


def pipeline_params(pipeline: Pipeline) -> dict[str, Any]:
    """Return the regressor's scalar hyper-parameters, for logging."""
    params = pipeline.named_steps["regressor"].get_params(deep=False)
    return {
        key: value
        for key, value in params.items()
        if value is None or isinstance(value, bool | int | float | str)
    }
