"""Where training finds its registry: the state folder, the tracking URI and the model name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "StudentExamPredictor"
DEFAULT_STATE_DIR = ".mlcanary"
EXPERIMENT_NAME = "mlcanary"


def state_dir() -> Path:
    """Return the state folder: `$MLCANARY_HOME`, or `./.mlcanary`, as an absolute path."""
    return Path(os.environ.get("MLCANARY_HOME") or DEFAULT_STATE_DIR).resolve()


@dataclass(frozen=True)
class RegistrySettings:
    """The tracking server or embedded registry that training logs and registers into."""

    tracking_uri: str
    """MLflow tracking URI; `sqlite:///…` under the state folder when none is configured."""
    artifact_root: str | None
    """Where the embedded registry keeps artifacts; None when a tracking server decides."""
    model_name: str
    """Registered model name, `DEFAULT_MODEL_NAME` by default."""

    @property
    def embedded(self) -> bool:
        """Whether this is the sqlite registry under the state folder rather than a server."""
        return self.artifact_root is not None

    @classmethod
    def from_env(cls, model_name: str | None = None) -> RegistrySettings:
        """Read `MLFLOW_TRACKING_URI`, `DEFAULT_MODEL_NAME` and `MLCANARY_HOME`."""
        name = model_name or os.environ.get("DEFAULT_MODEL_NAME") or DEFAULT_MODEL_NAME
        configured = os.environ.get("MLFLOW_TRACKING_URI")
        if configured:
            return cls(tracking_uri=configured, artifact_root=None, model_name=name)
        return cls.embedded_in(state_dir(), model_name=name)

    @classmethod
    def embedded_in(cls, state: Path, model_name: str = DEFAULT_MODEL_NAME) -> RegistrySettings:
        """Return the embedded sqlite registry kept under the state folder `state`."""
        return cls(
            tracking_uri=f"sqlite:///{state / 'mlflow.db'}",
            artifact_root=(state / "artifacts").as_uri(),
            model_name=model_name,
        )
