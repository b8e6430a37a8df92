"""Choosing stable or canary for one request: force header, sticky key, else weighted chance."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Protocol

from contracts.routing import RoutingConfig, Variant

BUCKETS = 10_000
FORCE_HEADER = "X-Force-Variant"


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


def choose_variant(
    config: RoutingConfig,
    headers: Mapping[str, str],
    rng: random.Random,
    healthy: Healthy,
) -> Variant:
    """Pick the variant for a request.

    Order: a valid `X-Force-Variant` (when the file allows it) wins, even over ejection, so an
    operator can always reach a variant; then the sticky key's bucket; then chance by weight.
    An ejected variant's share goes to the other, while the other is healthy.
    """
    if config.canary is None:
        return "stable"
    if config.force_header:
        forced = headers.get(FORCE_HEADER, "").strip().lower()
        if forced in ("stable", "canary"):
            return "canary" if forced == "canary" else "stable"
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
