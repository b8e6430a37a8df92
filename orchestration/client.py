"""The admin API's client for the command line (stdlib HTTP: the CLI stays quick to start)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.settings import system_settings
from contracts.errors import ErrorBody
from controller.errors import ControllerError
from controller.token import TOKEN_FILE, read_token
from orchestration.hints import command_as_typed

DEFAULT_CONTROLLER_URL = "http://127.0.0.1:8001"
CALL_TIMEOUT_SECONDS = 300.0
"""A deploy starts and checks a model server: it may take a while."""


@dataclass(frozen=True)
class AdminClient:
    """Calls the controller at `url` with the admin token."""

    url: str
    token: str

    @classmethod
    def from_env(cls, state: Path, url: str | None = None) -> AdminClient:
        """Use `MLCANARY_CONTROLLER_URL`, `MLCANARY_ADMIN_TOKEN` (else the state folder's token)."""
        settings = system_settings()
        where = url or settings.controller_url or DEFAULT_CONTROLLER_URL
        token = settings.admin_token
        if not token:
            try:
                token = read_token(state / TOKEN_FILE)
            except OSError:
                raise ControllerError(
                    f"no admin token: set MLCANARY_ADMIN_TOKEN or run `{command_as_typed()} up` "
                    f"(it writes {state / TOKEN_FILE})"
                ) from None
        return cls(where.rstrip("/"), token)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the JSON answer or raise ControllerError with its message."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (an http URL we were given)
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_SECONDS) as answer:  # noqa: S310
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise ControllerError(error_message(error.read(), error.code)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ControllerError(
                f"the controller at {self.url} cannot be reached: {reason}"
            ) from None


def error_message(body: bytes, status: int) -> str:
    """Say what an error answer in MLflow's shape says, with its status and code."""
    try:
        error = ErrorBody.model_validate_json(body)
        return f"{error.message} ({status} {error.error_code})"
    except ValidationError:
        return f"the controller answered {status}: {body[:200].decode(errors='replace')}"
