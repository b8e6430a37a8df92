"""Checks before a model server takes traffic: right version, compatible inputs, warm answer."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from pydantic import ValidationError

from contracts.payloads import ModelMetadata
from contracts.routing import RoutingConfig, Upstream, validation_problems
from contracts.v2 import model_path
from controller.errors import ControllerError, InvalidChange

CHECK_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
ZERO_BY_TYPE: dict[str, Any] = {"string": "", "boolean": False, "binary": ""}
V2_COLUMN_TYPES = {
    "FP64": "double", "FP32": "float", "INT64": "long", "INT32": "integer", "BOOL": "boolean",
    "BYTES": "string",
}  # fmt: skip
"""A V2 input's datatype as the MLflow column type our model server's signature names."""


async def stable_inputs(session: aiohttp.ClientSession, config: RoutingConfig) -> dict[str, str]:
    """Stable's input columns and types, which a candidate must take alike.

    From stable's `/metadata` (an mlcanary model server), or, for another server speaking the
    Open Inference Protocol (MLServer, KServe, Triton), from its V2 metadata.
    """
    try:
        return (await server_metadata(session, config.stable.url)).signature_inputs()
    except ControllerError:
        if "v2" not in config.stable.protocols:
            raise
    described = await v2_metadata(session, config.stable, config.model)
    inputs = described.get("inputs")
    return {
        str(item["name"]): V2_COLUMN_TYPES.get(str(item.get("datatype")), "string")
        for item in (inputs if isinstance(inputs, list) else [])
        if isinstance(item, dict) and "name" in item
    }


async def v2_metadata(
    session: aiohttp.ClientSession, upstream: Upstream, model: str
) -> dict[str, Any]:
    """Return a V2 server's metadata of the model it serves as `upstream`; raise if none."""
    path = model_path(upstream.model_name or model, upstream.model_version, "")
    try:
        async with session.get(upstream.url + path, timeout=CHECK_TIMEOUT) as answer:
            if answer.status != 200:
                raise ControllerError(f"{upstream.url}{path} answered {answer.status}")
            described = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        reason = str(error) or type(error).__name__
        raise ControllerError(f"{upstream.url}{path} cannot be read: {reason}") from None
    if not isinstance(described, dict):
        raise ControllerError(f"{upstream.url}{path} is not V2 model metadata")
    return described


async def server_metadata(session: aiohttp.ClientSession, url: str) -> ModelMetadata:
    """Return a model server's /metadata; raise ControllerError if it has none to give."""
    try:
        async with session.get(f"{url}/metadata", timeout=CHECK_TIMEOUT) as answer:
            if answer.status != 200:
                raise ControllerError(f"{url}/metadata answered {answer.status}")
            body = await answer.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ControllerError(f"{url}/metadata cannot be read: {reason}") from None
    try:
        return ModelMetadata.model_validate_json(body)
    except ValidationError as error:
        problems = validation_problems(error)
        raise ControllerError(f"{url}/metadata is not a model server's: {problems}") from None


def incompatibilities(stable: dict[str, str], candidate: dict[str, str]) -> list[str]:
    """Say how a candidate's inputs differ from stable's (empty when clients can switch freely)."""
    problems = [f"missing column {name!r}" for name in stable if name not in candidate]
    problems += [f"extra column {name!r}" for name in candidate if name not in stable]
    problems += [
        f"column {name!r} is {candidate[name]}, stable's is {kind}"
        for name, kind in stable.items()
        if name in candidate and candidate[name] != kind
    ]
    return problems


async def check_server(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    version: str,
    stable_inputs: dict[str, str] | None,
) -> ModelMetadata:
    """Raise ControllerError unless `url` serves `model` `version`, compatibly, and answers warm."""
    metadata = await server_metadata(session, url)
    if metadata.version != version or metadata.name not in (None, model):
        raise InvalidChange(
            f"{url} serves {metadata.name} version {metadata.version}, "
            f"not {model} version {version}"
        )
    inputs = metadata.signature_inputs()
    if stable_inputs is not None:
        problems = incompatibilities(stable_inputs, inputs)
        if problems:
            raise InvalidChange(
                f"version {version}'s input signature is not compatible with stable's: "
                + "; ".join(problems)
            )
    await warm_prediction(session, url, inputs)
    return metadata


async def warm_prediction(session: aiohttp.ClientSession, url: str, inputs: dict[str, str]) -> None:
    """Score one row of zeros (per the signature) and require a 200 with predictions."""
    row = {name: ZERO_BY_TYPE.get(kind, 0.0) for name, kind in inputs.items()}
    body = json.dumps({"dataframe_records": [row]}).encode()
    headers = {"Content-Type": "application/json"}
    try:
        async with session.post(
            f"{url}/invocations", data=body, headers=headers, timeout=CHECK_TIMEOUT
        ) as answer:
            text = await answer.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ControllerError(f"{url} could not score a test row: {reason}") from None
    if answer.status != 200 or "predictions" not in text:
        raise ControllerError(f"{url} could not score a test row: {answer.status} {text[:200]}")
