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

from urllib.parse import quote

from contracts.routing import Protocol, RoutingConfig, Variant
from contracts.v2 import model_path

MLFLOW_PATH = "/invocations"
_targets: list[tuple[RoutingConfig, bytes]] = []
"""The last config and its V2 infer target (kept by identity, as `choice_headers` keeps its)."""
_refusals: list[tuple[RoutingConfig, dict[Protocol, str | None]]] = []
"""The last config and `unspoken` for each protocol, kept the same way (read per request)."""


def v2_infer_target(config: RoutingConfig) -> bytes:
    """Return the request target of V2 inference on the router: `/v2/models/MODEL/infer`."""
    if _targets and _targets[0][0] is config:
        return _targets[0][1]
    target = model_path(quote(config.model, safe=""), None, "/infer").encode()
    _targets[:] = [(config, target)]
    return target


def upstream_path(config: RoutingConfig, variant: Variant, protocol: Protocol) -> str:
    """Where a variant takes a scoring request of `protocol`."""
    if protocol == "mlflow":
        return MLFLOW_PATH
    upstream = config.upstream(variant)
    name = quote(upstream.model_name or config.model, safe="")
    return model_path(name, upstream.model_version, "/infer")


def unspoken(config: RoutingConfig, protocol: Protocol) -> str | None:
    """Say why `protocol` cannot be served now (a variant that may be chosen lacks it), or None."""
    if not _refusals or _refusals[0][0] is not config:
        _refusals[:] = [(config, {})]
    known = _refusals[0][1]
    if protocol not in known:
        known[protocol] = _why_unspoken(config, protocol)
    return known[protocol]


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
