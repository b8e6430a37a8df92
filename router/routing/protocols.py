"""Which scoring protocol a request speaks, and where each variant takes it.

A client asks the router in MLflow's protocol (`POST /invocations`) or in the Open Inference
Protocol (`POST /v2/models/MODEL/infer`, MODEL the routing file's `model`). The split decides
the variant as for any request; the request then goes to that variant's path for the protocol:
`/invocations`, or `/v2/models/NAME[/versions/VERSION]/infer` with the name and version the
variant's server knows (routing file: `model_name`, `model_version`). So an MLServer or Triton
stable and an mlcanary canary each get the model under their own names.

A protocol is served only while every variant that can be chosen speaks it (stable; the canary
when it has weight or shadow copies); otherwise the request is refused with 404 before any
variant is chosen, so that the split and the verdict never lean on which protocol clients use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from contracts.routing import Protocol, RoutingConfig, Variant
from contracts.v2 import model_path

MLFLOW_PATH = "/invocations"


@dataclass
class _Known:
    """What the hot path asks of one config, worked out once (a config changes on reloads)."""

    config: RoutingConfig
    v2_target: bytes
    paths: dict[tuple[Variant, Protocol], str] = field(default_factory=dict)
    targets: dict[Variant, bytes] = field(default_factory=dict)
    refusals: dict[Protocol, str | None] = field(default_factory=dict)


_last: list[_Known] = []
"""The last config's `_Known`, kept by identity (as `choice_headers` keeps its names)."""


def _known(config: RoutingConfig) -> _Known:
    if _last and _last[0].config is config:
        return _last[0]
    known = _Known(config, model_path(quote(config.model, safe=""), None, "/infer").encode())
    _last[:] = [known]
    return known


def v2_infer_target(config: RoutingConfig) -> bytes:
    """Return the request target of V2 inference on the router: `/v2/models/MODEL/infer`."""
    return _known(config).v2_target


def upstream_path(config: RoutingConfig, variant: Variant, protocol: Protocol) -> str:
    """Where a variant takes a scoring request of `protocol`."""
    if protocol == "mlflow":
        return MLFLOW_PATH
    paths = _known(config).paths
    path = paths.get((variant, protocol))
    if path is None:
        upstream = config.upstream(variant)
        name = quote(upstream.model_name or config.model, safe="")
        path = paths[(variant, protocol)] = model_path(name, upstream.model_version, "/infer")
    return path


def v2_upstream_target(config: RoutingConfig, variant: Variant) -> bytes:
    """`upstream_path` of V2 inference as request-target bytes, for the raw plane."""
    targets = _known(config).targets
    target = targets.get(variant)
    if target is None:
        target = targets[variant] = upstream_path(config, variant, "v2").encode()
    return target


def unspoken(config: RoutingConfig, protocol: Protocol) -> str | None:
    """Say why `protocol` cannot be served now (a variant that may be chosen lacks it), or None."""
    refusals = _known(config).refusals
    if protocol not in refusals:
        refusals[protocol] = _why_unspoken(config, protocol)
    return refusals[protocol]


def _why_unspoken(config: RoutingConfig, protocol: Protocol) -> str | None:
    canary = config.canary
    can_be_chosen: list[Variant] = ["stable"]
    if canary is not None and (canary.weight > 0 or config.shadow.percent > 0):
        can_be_chosen.append("canary")
    for variant in can_be_chosen:
        spoken = config.upstream(variant).protocols
        if protocol not in spoken:
            return (
                f"model {config.model!r} is not served over {NAMES[protocol]} now: its {variant} "
                f"speaks {', '.join(NAMES[p] for p in spoken)} only (routing file: "
                f"{variant}.protocols)"
            )
    return None


NAMES: dict[Protocol, str] = {"mlflow": "MLflow's protocol", "v2": "the Open Inference Protocol"}
