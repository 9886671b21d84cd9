"""Who may see details: `HEALTH_SHOW_DETAILS` and the bearer `HEALTH_TOKEN`, shared by health and metrics."""

from __future__ import annotations

import hmac
from enum import Enum

from starlette.requests import Request

from svc.errors import Unauthorized
from svc.settings import Details, Settings

__all__ = ["INVALID_TOKEN", "Access", "authorization", "bearer_matches", "details_access", "unauthorized"]

INVALID_TOKEN = "The bearer token is not valid for this endpoint."  # noqa: S105 - a message, not a secret


class Access(Enum):
    """What a request may see of the details guarded by `HEALTH_SHOW_DETAILS`."""

    HIDDEN = "hidden"  # answer without details
    SHOWN = "shown"  # answer with details
    DENIED = "denied"  # credentials were sent and are wrong: 401


def bearer_matches(header: str | None, token: str | None) -> bool:
    """True when `header` is `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1), in constant time."""
    if header is None or token is None:
        return False
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip(" ").encode("latin-1"), token.encode())


def authorization(request: Request) -> str | None:
    """The request's `Authorization` header, if any (read off the raw headers: no `Headers` object is made)."""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return None


def details_access(settings: Settings, request: Request) -> Access:
    """`always` shows details to everyone; `when_authorized` to requests with the right bearer token; `never` to no one."""
    mode = settings.health_show_details
    if mode.public:
        return Access.SHOWN
    header = authorization(request)
    if mode is Details.NEVER or header is None:
        return Access.HIDDEN
    return Access.SHOWN if bearer_matches(header, settings.health_token) else Access.DENIED


def unauthorized(challenge: str, detail: str = INVALID_TOKEN) -> Unauthorized:
    """The 401 for guarded endpoints: `WWW-Authenticate: <challenge>`, never cached."""
    return Unauthorized(detail, headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"})
