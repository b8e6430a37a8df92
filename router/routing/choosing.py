"""Choosing stable or canary for one request: an operator's force, sticky key, else chance.

Forcing a variant is an operator's tool (smoke tests of a canary before it takes traffic), never
a client's: the routing file must allow it (`force_header`), the request must carry the router's
force token (`X-Force-Token`, a secret of its own: not the admin token, which can change the
split), and a variant at weight 0 is reached only when the file says so (`force_zero_weight`).
A token, not a list of networks: behind a load balancer or NAT every client has the same
address, and a token names who may force wherever the router runs. A request whose force is not
honoured is routed as any other and the refusal is counted by reason (`FORCE_REFUSALS`).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Mapping
from typing import Literal, NamedTuple, Protocol

from contracts.routing import RoutingConfig, Variant

BUCKETS = 10_000
FORCE_HEADER = "X-Force-Variant"
FORCE_TOKEN_HEADER = "X-Force-Token"  # noqa: S105 (a header's name)
ForceRefusal = Literal["disabled", "token", "weight_zero"]
FORCE_REFUSALS: tuple[ForceRefusal, ...] = ("disabled", "token", "weight_zero")
"""Why a request's `X-Force-Variant` was not honoured: the file does not allow forcing, the
token was missing or wrong, the variant is at weight 0 and the file does not allow that."""


class Choice(NamedTuple):
    """The variant a request goes to, and whether an operator forced it there.

    Forced requests are the operator's, not live traffic: they are counted apart and never judged.
    """

    variant: Variant
    forced: bool = False


def sticky_bucket(key: str) -> int:
    """Map a sticky key to one of 10,000 buckets, the same in every process and release.

    A cryptographic digest, not Python's `hash()`, which is salted per process.
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def canary_buckets(weight: float) -> int:
    """How many of the 10,000 buckets go to the canary at `weight` percent."""
    return round(weight * BUCKETS / 100)


class Healthy(Protocol):
    """Whether a variant may take traffic (a dict, or `health.VariantHealth` asked lazily)."""

    def get(self, variant: Variant, default: bool, /) -> bool:
        """Tell whether `variant` may take traffic (`default` when nothing is known of it)."""
        ...


def forced_variant(
    config: RoutingConfig, headers: Mapping[str, str], force_token: str | None
) -> Variant | ForceRefusal | None:
    """Return the variant an operator forced this request to, why a force was refused, or None.

    None: the request asks for no variant (`X-Force-Variant` absent or not stable/canary).
    """
    asked = headers.get(FORCE_HEADER, "").strip().lower()
    if asked not in ("stable", "canary"):
        return None
    if not config.force_header or config.canary is None:
        return "disabled"
    given = headers.get(FORCE_TOKEN_HEADER, "").strip().encode()
    if not force_token or not hmac.compare_digest(given, force_token.encode()):
        return "token"
    if asked == "canary" and config.canary.weight == 0 and not config.force_zero_weight:
        return "weight_zero"
    return "canary" if asked == "canary" else "stable"


def choose_variant(
    config: RoutingConfig,
    headers: Mapping[str, str],
    rng: random.Random,
    healthy: Healthy,
) -> Variant:
    """Pick the variant for a request of live traffic (a forced one: `forced_variant`).

    The sticky key's bucket, else chance by weight. An ejected variant's share goes to the
    other, while the other is healthy.
    """
    if config.canary is None:
        return "stable"
    key = headers.get(config.sticky.header) if config.sticky else None
    if key is not None:
        chosen: Variant = (
            "canary" if sticky_bucket(key) < canary_buckets(config.canary.weight) else "stable"
        )
    else:
        chosen = "canary" if rng.random() * 100 < config.canary.weight else "stable"
    other: Variant = "stable" if chosen == "canary" else "canary"
    if not healthy.get(chosen, True) and healthy.get(other, True):
        if other == "canary" and config.canary.weight == 0:
            return chosen  # a canary at weight 0 takes no traffic, even when stable is down
        return other
    return chosen
