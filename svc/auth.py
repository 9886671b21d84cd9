"""Who may see details: `HEALTH_SHOW_DETAILS` and the bearer `HEALTH_TOKEN`, shared by health and metrics."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from enum import Enum

from starlette.types import Scope, Send

from svc.errors import PROBLEM_TYPE, encode_problem
from svc.settings import Settings

__all__ = ["Access", "authorization", "bearer_matches", "details_access", "send_unauthorized"]


class Access(Enum):
    """What a request may see of the details guarded by `HEALTH_SHOW_DETAILS`."""

    HIDDEN = "hidden"  # answer without details
    SHOWN = "shown"  # answer with details
    DENIED = "denied"  # credentials were sent and are wrong: 401


def authorization(scope: Scope) -> bytes | None:
    """The raw `Authorization` header of the request, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def bearer_matches(header: bytes, token: str | None) -> bool:
    """True when `header` is `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1), in constant time."""
    scheme, _, credentials = header.partition(b" ")
    if token is None or scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(b" "), token.encode())


def details_access(settings: Settings, scope: Scope) -> Access:
    """`always` shows details to everyone; `when_authorized` to requests with the right bearer token; `never` to no one."""
    mode = settings.health_show_details
    if mode == "always":
        return Access.SHOWN
    if mode == "never" or (header := authorization(scope)) is None:
        return Access.HIDDEN
    return Access.SHOWN if bearer_matches(header, settings.health_token) else Access.DENIED


async def send_unauthorized(
    scope: Scope, send: Send, challenge: bytes, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[int, int]:
    """A 401 problem+json with `WWW-Authenticate: <challenge>`, never cached, plus `headers`; its status and size."""
    body = encode_problem(401, "Unauthorized", detail, scope["path"])
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"www-authenticate", challenge),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return 401, len(body)
