"""Pure ASGI middleware, one concern per class, each doing no work a request does not need.

Every layer costs each request a call and, when it watches the response, a wrapped `send`: the
headers every response carries are added by one wrapper, and the health endpoints are reached
without Starlette's exception middleware and router (`DirectRoutesMiddleware`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from svc.context import request_id, route_template
from svc.errors import ContentTooLarge, send_problem
from svc.logging import AccessLog

__all__ = [
    "HSTS_HEADER",
    "SECURITY_HEADERS",
    "AccessLogMiddleware",
    "BodyLimitMiddleware",
    "DirectRoutesMiddleware",
    "RequestIdMiddleware",
    "UnhandledErrorMiddleware",
    "new_request_id",
    "security_headers",
]

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# uvicorn's httptools parser accepts request heads of any size; these are nginx's and Node's defaults, far above
# what any real client sends, and refusing early bounds the work and memory a request can demand.
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 16_384

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
HSTS_HEADER = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


def security_headers(*, hsts: bool) -> list[tuple[bytes, bytes]]:
    """The headers every JSON API response should carry (HSTS when `hsts`: deployed behind TLS)."""
    return [*SECURITY_HEADERS, HSTS_HEADER] if hsts else list(SECURITY_HEADERS)


# Request ids: 128 random bits as 32 hex digits. One getrandom() call yields 256 of them (a system call
# per request costs more than the rest of the id); a deque hands them out, safely across threads.
_ID_BATCH = 256
_ids: deque[str] = deque()
os.register_at_fork(after_in_child=_ids.clear)  # a forked worker must never reuse its parent's ids


def new_request_id() -> str:
    """A new request id: 32 lowercase hex digits from the operating system's random source."""
    try:
        return _ids.popleft()
    except IndexError:
        block = os.urandom(16 * _ID_BATCH).hex()
        _ids.extend([block[i : i + 32] for i in range(32, len(block), 32)])
        return block[:32]


class RequestIdMiddleware:
    """Honour a well-formed inbound `X-Request-ID` or make one; expose it to logs; echo it on the response.

    The same `send` wrapper adds `headers` (the security headers, from `create_app`) to every
    response: one wrapper instead of one per header-adding concern.
    """

    def __init__(self, app: ASGIApp, *, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.app = app
        self.headers = list(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid: str | None = None
        headers = scope["headers"]
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"x-request-id" and rid is None and _VALID_REQUEST_ID.fullmatch(value):
                rid = value.decode()
        if rid is None:
            rid = new_request_id()
        header = (b"x-request-id", rid.encode())
        fixed = self.headers
        token = request_id.set(rid)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header, *fixed]
            await send(message)

        try:
            if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADER_COUNT:
                detail = f"The request headers exceed {MAX_HEADER_COUNT} fields or {MAX_HEADER_BYTES} bytes."
                await send_problem(scope, send_with_headers, 431, detail)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            request_id.reset(token)


class AccessLogMiddleware:
    """One access line per request, after the response: request id, method, path, route template, status,
    duration and bytes sent (see `svc.logging.AccessLog`: no `LogRecord` on the usual path)."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.log = AccessLog(logger or logging.getLogger("svc.access"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.log.logger.isEnabledFor(logging.INFO):
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
            duration_us = int((time.perf_counter() - start) * 1_000_000)
            self.log.write(
                scope["method"],
                scope["path"],
                route=route_template(scope),
                status=status,
                duration_us=duration_us,
                size=size,
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


class DirectRoutesMiddleware:
    """Hand requests for `routes` (plain ASGI endpoints without path parameters) straight to their endpoint.

    Innermost: the request has passed every other middleware. It skips what Starlette does for
    every request it routes (the exception middleware builds a `Request` and wraps `send`; the
    router tries each route's regex in turn), which costs more than the health endpoints
    themselves. The outcome is the router's: `routes` must come first in the application's routes,
    a method they do not allow, a `root_path`, or any other path goes on to the router, and
    `scope["route"]` is set as the router sets it. The endpoints must answer their own errors
    (one that raises gets `UnhandledErrorMiddleware`'s 500, not an exception handler's answer).
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.direct: dict[str, tuple[Route, ASGIApp, frozenset[str]]] = {}
        for route in routes:
            if not isinstance(route, Route) or route.param_convertors or route.app is not route.endpoint:
                raise ValueError(f"Not a plain ASGI route without path parameters: {route!r}")
            methods = frozenset(route.methods or ())
            self.direct.setdefault(route.path, (route, route.app, methods))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (target := self.direct.get(scope["path"])) is None or scope.get("root_path"):
            return await self.app(scope, receive, send)
        route, endpoint, methods = target
        if methods and scope["method"] not in methods:
            return await self.app(scope, receive, send)  # the router answers 405
        scope["route"], scope["endpoint"], scope["path_params"] = route, endpoint, {}
        await endpoint(scope, receive, send)
