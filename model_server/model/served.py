"""What the serving process holds of its model: a description, the fast path, MLflow's path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from model_server.model.loading import Description, LoadedModel, ResolvedModel, describe
from model_server.model.scoring import Scored, score_with_mlflow

if TYPE_CHECKING:
    from model_server.fastpath.choose import FastPath


class MlflowPath(Protocol):
    """Answers any request as `mlflow models serve` does (blocking: called from threads)."""

    def score(self, body: bytes, content_type: str) -> Scored:
        """Answer one request."""
        ...

    def where(self) -> str:
        """Say where MLflow's path runs now, for `/metadata`."""
        ...


@dataclass(frozen=True)
class InProcess:
    """MLflow's path in this process: the model was loaded here."""

    model: LoadedModel

    def score(self, body: bytes, content_type: str) -> Scored:
        """Answer with MLflow's own handler, on this thread."""
        return score_with_mlflow(self.model, body, content_type)

    def where(self) -> str:
        """Say that MLflow's path runs here."""
        return "in process"


@dataclass(frozen=True)
class ServedModel:
    """The model as the app serves it."""

    resolved: ResolvedModel
    description: Description
    fast_path: FastPath | None
    mlflow: MlflowPath


def served_in_process(model: LoadedModel) -> ServedModel:
    """Serve a model loaded in this process, MLflow's path included."""
    return ServedModel(model.resolved, describe(model), model.fast_path, InProcess(model))
