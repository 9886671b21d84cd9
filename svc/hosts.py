"""`ALLOWED_HOSTS`: refuse requests whose `Host` header names a host this service does not answer to.

Starlette's TrustedHostMiddleware answers such requests in plain text and may redirect to a `www.`
host; this one answers an RFC 9457 problem, like every other error, and never redirects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from svc.errors import send_problem

__all__ = ["HostMiddleware", "allows_any_host"]

# host[:port], the host a DNS name or IPv4 address (letters, digits, dashes, dots) or an IPv6 literal in brackets
# (RFC 9110 section 7.2). Anything else ("evil.com?.example.com") must not reach the suffix match of "*.domain".
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9.])?)(?::[0-9]{1,5})?")
DETAIL = "The Host header does not name a host this server answers to."
_KNOWN_MAX = 256


def allows_any_host(patterns: Iterable[str]) -> bool:
    """True when `patterns` (ALLOWED_HOSTS) contain "*": no check, and no middleware, is needed."""
    return "*" in patterns


class HostMiddleware:
    """Pass requests whose `Host` is in `allowed_hosts`; answer the rest with a 400 problem (HTTP) or close (WebSocket).

    A pattern is a host name or IP address, matched exactly (case-insensitively, the port ignored),
    or `*.domain`, matching any subdomain of `domain` (not `domain` itself). A request without
    exactly one well-formed `Host` header is refused too.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        patterns = [p.lower().rstrip(".").encode() for p in allowed_hosts]
        self.exact = frozenset(p for p in patterns if not p.startswith(b"*."))
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith(b"*."))
        # Header values already found allowed: a set lookup instead of a parse on the hot path. Bounded, and
        # holding allowed values only, so no client can grow it past the few spellings of the allowed hosts.
        self.known: set[bytes] = set()

    def allowed(self, host: bytes) -> bool:
        """Whether a `Host` header value names an allowed host."""
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) == 1 and self.allowed(hosts[0]):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return None
        # The detail never repeats the header: it is the client's input.
        await send_problem(scope, send, 400, DETAIL)
