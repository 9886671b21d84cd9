"""Pure ASGI middleware, one concern per class."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from svc.context import request_id
from svc.errors import ContentTooLarge, send_problem

__all__ = [
    "AccessLogMiddleware",
    "BodyLimitMiddleware",
    "RequestIdMiddleware",
    "SecurityHeadersMiddleware",
    "UnhandledErrorMiddleware",
]

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
HSTS_HEADER = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class RequestIdMiddleware:
    """Honour a well-formed inbound `X-Request-ID` or make one; echo it and expose it to logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value if _VALID_REQUEST_ID.fullmatch(value) else None
                break
        if rid is None:
            rid = uuid.uuid4().hex.encode()
        header = (b"x-request-id", rid)
        token = request_id.set(rid.decode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class SecurityHeadersMiddleware:
    """Add the headers every JSON API response should carry (HSTS when `hsts` is set)."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.headers = [*SECURITY_HEADERS, HSTS_HEADER] if hsts else SECURITY_HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessLogMiddleware:
    """One structured log line per request, written after the response is sent."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger("svc.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        size = 0

        async def send_and_measure(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_measure)
        finally:
            duration_ms = round((time.perf_counter() - start) * 1000, 3)
            self.logger.info(
                "%s %s %d %.3fms",
                scope["method"],
                scope["path"],
                status,
                duration_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": duration_ms,
                    "bytes": size,
                },
            )


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with a 413 problem, declared or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    return await send_problem(scope, send, 400, "The Content-Length header is not a number.")
                if int(value) > self.max_bytes:
                    return await send_problem(scope, send, 413, ContentTooLarge.detail)
                break
        received = 0
        limit = self.max_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ContentTooLarge()
            return message

        await self.app(scope, receive_limited, send)


class UnhandledErrorMiddleware:
    """Turn any exception that escaped the handlers into a generic problem+json 500, logged once.

    Sits inside the request id and header middleware so the 500 carries them too; Starlette's
    own `ServerErrorMiddleware` is outside all user middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.logger = logging.getLogger("svc.errors")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            # The text of an exception may hold data or secrets: it goes to the log only.
            self.logger.exception("Unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                # Headers are out; the server closes the connection. Nothing else to say.
                return
            await send_problem(scope, send, 500, "The server encountered an unexpected error.")
