"""Errors the model server answers itself, in MLflow's body shape."""

from __future__ import annotations

from contracts.errors import error_body


class ScoringError(Exception):
    """A request the server refuses, with its HTTP status and MLflow error code."""

    def __init__(self, message: str, status: int = 400, error_code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code

    def body(self) -> bytes:
        """Return MLflow's error body: `{"error_code": ..., "message": ...}`."""
        return error_body(self.error_code, self.message)
