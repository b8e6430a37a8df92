"""Model versions whose verdict is known, registered before the system starts.

Every model is a scikit-learn tree on the demo dataset, so that on the dataset's rows (the
soak's traffic) each answers exactly what it was trained on, and a verdict has one right
answer: a twin of stable (same predictions) must be promoted; a model shifted by 10 points,
one 60 ms slower, one failing a fifth of its rows, and one right in distribution but wrong per
row (trained on the scores permuted across rows) must be rolled back, by the gate named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.settings import EXPERIMENT_NAME, RegistrySettings
from training.dataset import DEFAULT_PATH, FEATURES, TARGET, load_dataset
from training.registry import CHALLENGER, CHAMPION, connect, ensure_experiment, register_version
from training.train import register_estimator, serving_requirements

SLOWER_S = 0.06
"""What the slower model adds to each answer: many times the trees' own time."""
FAILING_QUANTILE = 0.8
"""The failing model refuses the rows whose previous score is above this quantile of the
dataset's (a fifth of them, always the same: a bug in one range of one feature). A row of
zeros, the controller's check before any traffic, passes, as it would for such a bug."""


@dataclass(frozen=True)
class Truth:
    """A registered version and the verdict a right judge gives it."""

    name: str
    version: str
    outcome: str
    """`promoted` or `rolled_back`."""
    gates: frozenset[str] = frozenset()
    """For a rollback: the gates that may rightly fail (at least one must; a prediction gate
    by its name before the colon)."""
    own_errors: bool = False
    """Its own error answers reach clients while it is judged (the design's allowance)."""


def register_truths(settings: RegistrySettings) -> tuple[str, list[Truth]]:
    """Register stable (alias champion) and the five kinds of canary; return stable's version
    and each canary's truth, in the order rollouts take them (the twin is the challenger)."""
    import numpy as np
    from sklearn.tree import DecisionTreeRegressor

    frame = load_dataset(DEFAULT_PATH)
    features, score = frame[list(FEATURES)], frame[TARGET].to_numpy(dtype=float)
    permuted = np.random.default_rng(0).permutation(score)

    def tree(target: Any, seed: int = 0) -> Any:
        return DecisionTreeRegressor(random_state=seed).fit(features, target)

    stable = register_estimator(settings, tree(score), features, CHAMPION)
    twin = register_estimator(settings, tree(score, seed=1), features, CHALLENGER)
    shifted = register_estimator(settings, tree(score + 10), features, None)
    slower = _register_wrapped(settings, tree(score), features, delay_s=SLOWER_S)
    above = float(np.quantile(features["previous_scores"], FAILING_QUANTILE))
    failing = _register_wrapped(settings, tree(score), features, fail_above=above)
    wrong = register_estimator(settings, tree(permuted), features, None)
    return stable, [
        Truth("twin", twin, "promoted"),
        Truth("shifted", shifted, "rolled_back", frozenset({"prediction_psi", "label_errors"})),
        Truth("slower", slower, "rolled_back", frozenset({"p99_ratio"})),
        Truth(
            "failing",
            failing,
            "rolled_back",
            frozenset({"error_rate", "error_ratio"}),
            own_errors=True,
        ),
        Truth("wrong per row", wrong, "rolled_back", frozenset({"label_errors", "prediction_psi"})),
    ]


def _register_wrapped(
    settings: RegistrySettings,
    estimator: Any,
    features: Any,
    delay_s: float = 0.0,
    fail_above: float | None = None,
) -> str:
    """Register `estimator` behind a pyfunc that waits `delay_s` per call, or refuses a request
    holding a row whose previous score is above `fail_above`."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Wrapped(mlflow.pyfunc.PythonModel):  # defined here: pickled by value with the model
        def __init__(self) -> None:
            self.estimator, self.delay_s, self.fail_above = estimator, delay_s, fail_above

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            import time

            if self.delay_s:
                time.sleep(self.delay_s)
            above = self.fail_above
            if above is not None and (model_input["previous_scores"] > above).any():
                raise ValueError("this model cannot score previous scores this high")
            return self.estimator.predict(model_input)

    # The model server scores its input example at start: rows the model answers.
    example = (
        features if fail_above is None else features[features["previous_scores"] <= fail_above]
    )
    example = example.head(2)
    client = connect(settings)
    experiment = ensure_experiment(client, EXPERIMENT_NAME, settings.artifact_root)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Wrapped(),
            signature=infer_signature(features, estimator.predict(features)),
            input_example=example, pip_requirements=serving_requirements(),
        )  # fmt: skip
    version = register_version(client, settings.model_name, info, run.info.run_id, {}, None)
    return str(version.version)
