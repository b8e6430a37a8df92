"""The names the controller answers to: a DNS-rebinding page is refused by its `Host`.

A page on an attacker's domain whose name is made to resolve to 127.0.0.1 can send requests to
the controller from an operator's browser, with the attacker's name in `Host`; the browser
lets that page read the answers (same origin, to it). Refusing every name the controller was
not told is its own closes that. An IP address in `Host` is always taken: no such page can put
one there (its origin is a name), and Kubernetes probes and Prometheus reach pods by address.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (names of binds, not binds)


def host_names(bind_host: str, configured: tuple[str, ...] = ()) -> frozenset[str]:
    """Return the names to answer to: loopback's, the address bound (if a name), `configured`."""
    names = {name.strip().lower().rstrip(".") for name in configured if name.strip()}
    if bind_host not in WILDCARDS:
        names.add(bind_host.lower())
    return frozenset(LOOPBACK_NAMES | names)


def name_of(host_header: str) -> str:
    """Return the host of a `Host` header, without its port or an IPv6 address's brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def is_allowed(host_header: str | None, names: frozenset[str]) -> bool:
    """Whether a request's `Host` is one of `names` or an IP address."""
    if not host_header:
        return False
    name = name_of(host_header)
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
