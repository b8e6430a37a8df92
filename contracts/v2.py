"""The Open Inference Protocol (KServe's V2 REST protocol) as every part reads it.

The model server answers it and the router relays it to variants under their own model names.
What they share lives here: the paths, the datatypes and the error body. How the judge reads
predictions out of a V2 answer is `common/predictions.py` (the prediction log's readers in
`common` need it too).

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

from __future__ import annotations

import json
import re

DATATYPES = frozenset({
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
})  # fmt: skip
"""Every tensor datatype the protocol names (BF16 is gRPC-only in practice and not taken)."""

MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/infer|/ready|)$"
)
"""A model's paths: metadata (no rest), `/ready` and `/infer`, with or without a version."""


def model_path(name: str, version: str | None, rest: str) -> str:
    """Return the path of a model's endpoint (`rest`: "", "/ready" or "/infer")."""
    versioned = f"/versions/{version}" if version else ""
    return f"/v2/models/{name}{versioned}{rest}"


def v2_error(message: str) -> bytes:
    """Return the protocol's error body: `{"error": "..."}`."""
    return json.dumps({"error": message}).encode()
