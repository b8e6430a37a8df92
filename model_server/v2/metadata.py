"""What a model's V2 metadata says, read from its MLflow signature as MLServer reads it.

Inputs are described as MLServer's MLflow runtime describes them (each column [-1, 1] with its
datatype and codec; a tensor with its own shape), so a client built for MLServer builds the
same requests here. Outputs are described as this server's answers carry them (`answers.py`):
one unnamed output is `output-1` with the batch dimension first. MLServer's own metadata calls
that output `output-0` and its answers `output-1`; we describe what we answer.
"""

from __future__ import annotations

from typing import Any

from model_server.v2.answers import OUTPUT_NAME, declared_type
from model_server.v2.requests import ContentType

TEXT_TYPES = frozenset({"string", "binary", "datetime"})


def content_type_of(signature: dict[str, Any] | None) -> ContentType:
    """How requests read by default: `pd` for columns (or no signature), else `np` or `dict`."""
    specs = _specs(signature, "inputs")
    if not specs or specs[0].get("type") != "tensor":
        return "pd"
    return "dict" if all(spec.get("name") for spec in specs) else "np"


def signature_columns(signature: dict[str, Any] | None) -> list[str]:
    """Return the named input columns of a column-based signature, in order (else none)."""
    specs = _specs(signature, "inputs")
    if any(spec.get("type") == "tensor" or not spec.get("name") for spec in specs):
        return []
    return [str(spec["name"]) for spec in specs]


def one_unnamed_column(signature: dict[str, Any] | None) -> bool:
    """Whether the signature's input is one column without a name (a type-hinted list)."""
    specs = _specs(signature, "inputs")
    return len(specs) == 1 and specs[0].get("type") != "tensor" and not specs[0].get("name")


def output_specs(signature: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return the signature's output entries (none without a signature)."""
    return _specs(signature, "outputs")


def model_metadata(
    name: str, version: str, platform: str, signature: dict[str, Any] | None
) -> dict[str, Any]:
    """Return the body of `GET /v2/models/{name}`."""
    inputs = [_input(index, spec) for index, spec in enumerate(_specs(signature, "inputs"))]
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": inputs,
        "outputs": _outputs(_specs(signature, "outputs")),
        "parameters": {"content_type": content_type_of(signature)},
    }


def _specs(signature: dict[str, Any] | None, side: str) -> list[dict[str, Any]]:
    specs = (signature or {}).get(side)
    return [spec for spec in specs if isinstance(spec, dict)] if isinstance(specs, list) else []


def _input(index: int, spec: dict[str, Any]) -> dict[str, Any]:
    tensor = spec.get("type") == "tensor"
    datatype = declared_type(spec) or "BYTES"
    shape = list(spec.get("tensor-spec", {}).get("shape", [-1])) if tensor else [-1, 1]
    codec = "str" if spec.get("type") in TEXT_TYPES else "np"
    return {
        "name": str(spec.get("name") or f"input-{index}"),
        "datatype": datatype,
        "shape": shape,
        "parameters": {"content_type": codec},
    }


def _outputs(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(specs) > 1 and all(spec.get("name") for spec in specs):  # a data frame's columns
        return [
            {"name": str(spec["name"]), "datatype": declared_type(spec) or "BYTES",
             "shape": [-1, 1]}
            for spec in specs
        ]  # fmt: skip
    if not specs:
        return []
    spec = specs[0]
    shape = list(spec.get("tensor-spec", {}).get("shape", [-1]))
    if len(shape) == 1:
        shape.append(1)
    if spec.get("type") != "tensor":
        shape = [-1, len(specs)] if len(specs) > 1 else [-1, 1]
    return [{"name": OUTPUT_NAME, "datatype": declared_type(spec) or "BYTES", "shape": shape}]
