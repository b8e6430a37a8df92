"""The system's settings from the environment, and the state folder every part keeps files in.

Read and validated once per process.

Every environment variable mlcanary reads is a field here (the original app's four, ours, and
the Kubernetes client's two), so a bad value gets the same error wherever it is read: the CLI
and the controller stop at start with it; the router, which needs `CANARY_PROBABILITY` only
for `/update-model`, serves traffic and answers that path with it. Command-line options
override these in each command; the result is passed down, never read again.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_MODEL_NAME = "StudentExamPredictor"
DEFAULT_STATE_DIR = ".mlcanary"
EXPERIMENT_NAME = "mlcanary"
DEFERRED = {"canary_probability": "CANARY_PROBABILITY"}
"""Settings whose bad value does not stop a process that does not need them (the router)."""


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it, in one line."""


class SystemSettings(BaseModel):
    """Every environment variable mlcanary reads, each field under its variable's name.

    A plain model read by `read_settings`, not pydantic-settings' BaseSettings: that package
    cost every command 0.1 s of CPU at start (an emergency `rollback` included) for what is a
    dictionary of at most eleven variables.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    home: Path = Field(default=Path(DEFAULT_STATE_DIR), validation_alias="MLCANARY_HOME")
    """The state folder: registry, routing file, logs, token, audit log, desired state."""
    tracking_uri: str | None = Field(default=None, validation_alias="MLFLOW_TRACKING_URI")
    """MLflow's tracking server or store; none: the embedded sqlite registry under `home`."""
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME, min_length=1, validation_alias="DEFAULT_MODEL_NAME"
    )
    """The registered model the system serves (the original app's setting)."""
    model_version: str = Field(default="latest", validation_alias="DEFAULT_MODEL_VERSION")
    """The version served as stable when there is no routing file yet: a number or `latest`."""
    canary_probability: float | None = Field(default=0.1, validation_alias="CANARY_PROBABILITY")
    """The canary's share, 0 to 1 (the original app's setting); None when the value was bad."""
    controller_url: str | None = Field(default=None, validation_alias="MLCANARY_CONTROLLER_URL")
    """The admin API the CLI and the router's original admin paths talk to."""
    admin_token: str | None = Field(default=None, validation_alias="MLCANARY_ADMIN_TOKEN")
    """The admin token (a Kubernetes Secret, say) instead of the state folder's file."""
    labels_token: str | None = Field(default=None, validation_alias="MLCANARY_LABELS_TOKEN")
    """The controller's labels token (posts labels, nothing else) instead of the state folder's."""
    force_token: str | None = Field(default=None, validation_alias="MLCANARY_FORCE_TOKEN")
    """The router's force token (see `router.routing.choosing`): not the admin token."""
    kubeconfig: str | None = Field(default=None, validation_alias="KUBECONFIG")
    """The Kubernetes client's credentials outside a cluster (its first file is used)."""
    pod_namespace: str = Field(default="default", validation_alias="POD_NAMESPACE")
    """The namespace when neither the service account nor kubeconfig names one."""
    problems: dict[str, str] = Field(default_factory=dict, exclude=True)
    """Deferred settings that were bad, by variable: the error to give where they are used."""

    @field_validator("canary_probability", mode="before")
    @classmethod
    def _probability(cls, value: Any) -> Any:
        if value is None:  # left out by `read_settings`, which keeps the problem
            return None
        try:
            probability = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number from 0 to 1, got {value!r}") from None
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"must be a number from 0 to 1, got {value!r}")
        return probability

    @field_validator("model_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not (value.isdigit() or value == "latest"):
            raise ValueError(f"must be a version number or latest, got {value!r}")
        return value

    @property
    def state_dir(self) -> Path:
        """The state folder, absolute."""
        return self.home.resolve()

    def canary_percent(self) -> float:
        """Return `CANARY_PROBABILITY` as a percent (0.1 steps); SettingsError if it was bad."""
        if self.canary_probability is None:
            raise SettingsError(self.problems["CANARY_PROBABILITY"])
        return round(self.canary_probability * 100, 1)


def read_settings(environ: Mapping[str, str] = os.environ) -> SystemSettings:
    """Read and validate the environment (SettingsError naming the variable if it is bad).

    A variable set to the empty string counts as unset.
    """
    names = [field.validation_alias for field in SystemSettings.model_fields.values()]
    given = {name: environ[name] for name in names if isinstance(name, str) and environ.get(name)}
    try:
        return SystemSettings.model_validate(given)
    except ValidationError as error:
        problems = {_variable(problem): problem["msg"] for problem in error.errors()}
    hard = {name: why for name, why in problems.items() if name not in DEFERRED.values()}
    if hard:
        raise SettingsError(_say(hard)) from None
    deferred = {name: None for name in DEFERRED.values() if name in problems}
    said = {name: _say({name: problems[name]}) for name in problems}
    return SystemSettings.model_validate({**given, **deferred, "problems": said})


@functools.cache
def system_settings() -> SystemSettings:
    """Return this process's settings, read once (the environment is not read again)."""
    return read_settings()


def state_dir() -> Path:
    """Return the state folder: `$MLCANARY_HOME`, or `./.mlcanary`, as an absolute path."""
    return system_settings().state_dir


def _variable(problem: Any) -> str:
    location = problem.get("loc") or ("?",)
    return str(location[0])


def _say(problems: dict[str, str]) -> str:
    """One line: `invalid settings: NAME: why; NAME: why`."""
    said = "; ".join(
        f"{name}: {why.removeprefix('Value error, ')}" for name, why in problems.items()
    )
    return f"invalid settings: {said}"


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
        """Use `MLFLOW_TRACKING_URI`, `DEFAULT_MODEL_NAME` and `MLCANARY_HOME` of this process."""
        settings = system_settings()
        name = model_name or settings.model_name
        if settings.tracking_uri:
            return cls(tracking_uri=settings.tracking_uri, artifact_root=None, model_name=name)
        return cls.embedded_in(settings.state_dir, model_name=name)

    @classmethod
    def embedded_in(cls, state: Path, model_name: str = DEFAULT_MODEL_NAME) -> RegistrySettings:
        """Return the embedded sqlite registry kept under the state folder `state`."""
        return cls(
            tracking_uri=f"sqlite:///{state / 'mlflow.db'}",
            artifact_root=(state / "artifacts").as_uri(),
            model_name=model_name,
        )
