"""The routing file: its schema (owned here), validated reading, and atomic writing."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.files import write_atomically

Variant = Literal["stable", "canary"]
Protocol = Literal["mlflow", "v2"]
"""Scoring protocols: MLflow's (`POST /invocations`) and the Open Inference Protocol (V2)."""
MODEL_SERVER_PROTOCOLS: tuple[Protocol, ...] = ("mlflow", "v2")
"""What mlcanary's own model server speaks, both on one port (its routing entries say so)."""
HEADER_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class RoutingFileError(Exception):
    """The routing file cannot be used; the message names the file, the field and the problem."""


class Upstream(BaseModel):
    """One model server: where it is and which model version it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    """Base URL of the model server, e.g. http://127.0.0.1:5101."""
    version: str = Field(min_length=1)
    """The registry version it serves; echoed in X-Model-Version."""
    protocols: tuple[Protocol, ...] = Field(default=("mlflow",), min_length=1)
    """The scoring protocols it speaks: `mlflow` (`/invocations`), `v2` (the Open Inference
    Protocol: KServe, MLServer, Triton; mlcanary's model server speaks both)."""
    model_name: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9._~-]+$")
    """The model's name on its V2 paths (`/v2/models/NAME/infer`); default: the routing
    file's `model`."""
    model_version: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9._~-]+$")
    """The version segment of its V2 paths (`/versions/VERSION`), if it needs one."""

    @field_validator("protocols")
    @classmethod
    def _distinct_protocols(cls, protocols: tuple[Protocol, ...]) -> tuple[Protocol, ...]:
        if len(set(protocols)) != len(protocols):
            raise ValueError(f"must be distinct, got {list(protocols)}")
        return protocols

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"must be an http(s) URL with a host, got {url!r}")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ValueError(f"must be a base URL without path or query, got {url!r}")
        return url.rstrip("/")


class Canary(Upstream):
    """The candidate version and its share of traffic."""

    weight: float = Field(default=0.0, ge=0.0, le=100.0)
    """Percent of traffic, 0 to 100 in steps of 0.1."""

    @field_validator("weight")
    @classmethod
    def _tenths(cls, weight: float) -> float:
        if abs(weight * 10 - round(weight * 10)) > 1e-9:
            raise ValueError(f"must be a multiple of 0.1, got {weight}")
        return round(weight, 1)


class Sticky(BaseModel):
    """Requests with the same key in this header always go to the same variant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    header: str = Field(min_length=1)
    """Header whose value is the sticky key, e.g. X-User-Id."""

    @field_validator("header")
    @classmethod
    def _token(cls, header: str) -> str:
        if not HEADER_TOKEN.match(header):
            raise ValueError(f"must be a valid HTTP header name, got {header!r}")
        return header


class PredictionLogShare(BaseModel):
    """Record this share of answered predictions in the prediction log."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent: float = Field(default=0.0, ge=0.0, le=100.0)
    """Percent of answered scoring requests recorded (0: none)."""


class Shadow(BaseModel):
    """Copy a share of stable-routed requests to the canary, answering only from stable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent: float = Field(default=0.0, ge=0.0, le=100.0)
    """Percent of stable-routed requests copied to the canary."""


MAX_BUCKETS = 50
"""Prometheus series per output and variant: enough for deciles or a classifier's labels."""


class PredictionOutput(BaseModel):
    """How one model output's predictions are counted: in numeric buckets, or by class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    edges: list[float] | None = Field(default=None, min_length=1, max_length=MAX_BUCKETS)
    """Upper bounds of the histogram's buckets (+Inf is added), strictly rising."""
    classes: list[str] | None = Field(default=None, min_length=1, max_length=MAX_BUCKETS)
    """Class labels counted one by one; any other label counts as `other`."""

    @field_validator("edges")
    @classmethod
    def _rising(cls, edges: list[float] | None) -> list[float] | None:
        if edges is not None:
            if any(not math.isfinite(edge) for edge in edges):
                raise ValueError("must be finite numbers")
            if any(later <= earlier for earlier, later in itertools.pairwise(edges)):
                raise ValueError(f"must rise strictly, got {edges}")
        return edges

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str] | None) -> list[str] | None:
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"must be distinct, got {classes}")
        return classes

    def model_post_init(self, _context: object) -> None:
        """Require exactly one of the two ways of counting."""
        if (self.edges is None) == (self.classes is None):
            raise ValueError("give either edges (numbers) or classes (labels)")


class Predictions(BaseModel):
    """How the routers count each output's predictions, cut from the stable version's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    """The stable version whose predictions the buckets were cut from."""
    outputs: dict[str, PredictionOutput] = Field(min_length=1, max_length=MAX_BUCKETS)
    """By output: a column name, an index for array outputs, or `predictions` for one."""


class RoutingConfig(BaseModel):
    """The whole split: the one source of truth the routers follow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    """Registered model name."""
    stable: Upstream
    """The version serving most traffic."""
    canary: Canary | None = None
    """The candidate version, if any."""
    sticky: Sticky | None = None
    """Optional sticky routing by a header's value."""
    shadow: Shadow = Shadow()
    """Optional shadow traffic to the canary."""
    force_header: bool = False
    """Honour `X-Force-Variant: stable|canary` on requests that carry the router's force token
    (`X-Force-Token`); forced requests are counted apart and never judged."""
    force_zero_weight: bool = False
    """Let a forced request reach a canary at weight 0 (to smoke-test it before it takes any
    live traffic)."""
    predictions: Predictions | None = None
    """How predictions are counted for the rollout's prediction gate (None: not counted)."""
    log: PredictionLogShare = PredictionLogShare()
    """The share of answers recorded in the prediction log (for labels that come later)."""

    @property
    def canary_weight(self) -> float:
        """The canary's percent of traffic, 0 when there is no canary."""
        return self.canary.weight if self.canary else 0.0

    def upstream(self, variant: Variant) -> Upstream:
        """Return the upstream of a variant (stable when no canary is configured)."""
        if variant == "canary" and self.canary is not None:
            return self.canary
        return self.stable


def content_version(data: bytes) -> str:
    """Return the short content hash routers report for a loaded routing file."""
    return hashlib.sha256(data).hexdigest()[:16]


def parse_routing(data: bytes, source: str) -> RoutingConfig:
    """Validate routing-file bytes as a whole; raise RoutingFileError naming the problem."""
    if not data.strip():
        raise RoutingFileError(f"{source}: the file is empty")
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as error:
        raise RoutingFileError(f"{source}: not valid YAML: {_first_line(error)}") from None
    if not isinstance(document, dict):
        raise RoutingFileError(f"{source}: must be a mapping, got {type(document).__name__}")
    try:
        return RoutingConfig.model_validate(document)
    except ValidationError as error:
        raise RoutingFileError(f"{source}: {validation_problems(error)}") from None


def validation_problems(error: ValidationError, whole: str = "(top)") -> str:
    """Name each invalid field (dotted path, `whole` for the document) and why, on one line."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or whole}: {item['msg']}"
        for item in error.errors()
    )


def read_routing_file(path: Path) -> tuple[RoutingConfig, str]:
    """Read and validate the routing file; return it with its content version."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RoutingFileError(f"{path}: cannot read: {error.strerror or error}") from None
    return parse_routing(data, str(path)), content_version(data)


def render_routing(config: RoutingConfig) -> bytes:
    """Serialize a routing config as YAML, leaving out what is unset."""
    document = config.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(document, sort_keys=False).encode()


def write_routing_file(path: Path, config: RoutingConfig) -> str:
    """Write atomically (temp file in the same folder, fsync, rename); return its version."""
    data = render_routing(config)
    parse_routing(data, str(path))  # never write what a router would refuse
    write_atomically(path, data)
    return content_version(data)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return " ".join(text.split())[:300] if text else type(error).__name__
