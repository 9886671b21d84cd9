"""`ALLOWED_HOSTS`: which `Host` headers name this service.

The edge refuses the others with a 400 problem (Starlette's TrustedHostMiddleware would answer in
plain text and may redirect to a `www.` host).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["AllowedHosts", "allows_any_host"]

# host[:port], the host a DNS name or IPv4 address (letters, digits, dashes, dots) or an IPv6 literal in brackets
# (RFC 9110 section 7.2). Anything else ("evil.com?.example.com") must not reach the suffix match of "*.domain".
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9.])?)(?::[0-9]{1,5})?")
_KNOWN_MAX = 256


def allows_any_host(patterns: Iterable[str]) -> bool:
    """True when `patterns` (ALLOWED_HOSTS) contain "*": no check is needed."""
    return "*" in patterns


class AllowedHosts:
    """`ALLOWED_HOSTS` as a check: does a request's `Host` name a host this service answers to?

    A pattern is a host name or IP address, matched exactly (case-insensitively, the port ignored),
    or `*.domain`, matching any subdomain of `domain` (not `domain` itself).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        lowered = [p.lower().rstrip(".").encode() for p in patterns]
        self.exact = frozenset(p for p in lowered if not p.startswith(b"*."))
        self.suffixes = tuple(p[1:] for p in lowered if p.startswith(b"*."))
        # Header values already found allowed: a set lookup instead of a parse on the hot path. Bounded, and
        # holding allowed values only, so no client can grow it past the few spellings of the allowed hosts.
        self.known: set[bytes] = set()

    def allowed(self, hosts: list[bytes]) -> bool:
        """Whether the request's `Host` headers (exactly one is allowed) name an allowed host."""
        if len(hosts) != 1:
            return False
        host = hosts[0]
        if host in self.known:
            return True
        match = _HOST.fullmatch(host)
        if match is None:
            return False
        name = match[1].lower().rstrip(b".")
        ok = name in self.exact or name.endswith(self.suffixes)
        if ok and len(self.known) < _KNOWN_MAX:
            self.known.add(host)
        return ok
