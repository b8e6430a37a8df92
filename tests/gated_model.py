"""A registered model whose server cannot start while a file (the test's hold) exists."""

from __future__ import annotations

from pathlib import Path

from common.settings import EXPERIMENT_NAME, RegistrySettings
from training.dataset import DEFAULT_PATH, FEATURES, load_dataset
from training.registry import connect, ensure_experiment, register_version
from training.train import serving_requirements


def register_gated_model(settings: RegistrySettings, hold: Path) -> str:
    """Register a model that cannot load while `hold` exists (10 min at most); return its version.

    Its inputs are the demo's, so it may be deployed as a canary beside the demo's models: a
    model server as slow to start as the test wants, with no clock involved.
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Gated(mlflow.pyfunc.PythonModel):  # defined here: pickled by value with the model
        def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
            import time

            deadline = time.monotonic() + 600
            while Path(context.model_config["hold"]).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("held for 10 minutes")
                time.sleep(0.05)

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input.sum(axis=1)

    features = load_dataset(DEFAULT_PATH)[list(FEATURES)].head(20)
    client = connect(settings)
    experiment = ensure_experiment(client, EXPERIMENT_NAME, settings.artifact_root)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Gated(), model_config={"hold": str(hold)},
            signature=infer_signature(features, features.sum(axis=1)),
            input_example=features.head(2), pip_requirements=serving_requirements(),
        )  # fmt: skip
    version = register_version(client, settings.model_name, info, run.info.run_id, {}, None)
    return str(version.version)
