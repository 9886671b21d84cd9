"""svc's pure ASGI middleware, each layer doing no work a request does not need.

Every layer costs each request a call and, when it watches the response, a wrapped `send`: what
every request gets (its id, the response headers, the last-resort 500, metrics and the access
line) is done by one layer around one wrapper (`EdgeMiddleware`), and the health endpoints are
reached without Starlette's exception middleware and router (`DirectRoutesMiddleware`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from svc.context import request_id, route_template
from svc.errors import ContentTooLarge, send_problem

if TYPE_CHECKING:
    from svc.logging import AccessLog
    from svc.metrics import Metrics

__all__ = [
    "HSTS_HEADER",
    "SECURITY_HEADERS",
    "BodyLimitMiddleware",
    "DirectEndpoint",
    "DirectRoutes",
    "DirectRoutesMiddleware",
    "EdgeMiddleware",
    "new_request_id",
    "security_headers",
]

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# uvicorn's httptools parser accepts request heads of any size; these are nginx's and Node's defaults, far above
# what any real client sends, and refusing early bounds the work and memory a request can demand.
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 16_384
# A request with neither has no body (RFC 9112 section 6.3).
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})

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
# per request costs more than the rest of the id); a deque hands them out, safely across threads, each
# with its response header made in the same batch.
_ID_BATCH = 256
_ids: deque[tuple[str, tuple[bytes, bytes]]] = deque()
os.register_at_fork(after_in_child=_ids.clear)  # a forked worker must never reuse its parent's ids


def new_request_id() -> tuple[str, tuple[bytes, bytes]]:
    """A new request id (32 lowercase hex digits from the operating system's random source) and its `X-Request-ID` header."""
    try:
        return _ids.popleft()
    except IndexError:
        block = os.urandom(16 * _ID_BATCH).hex()
        _ids.extend(
            [(rid, (b"x-request-id", rid.encode())) for rid in (block[i : i + 32] for i in range(0, len(block), 32))]
        )
        return _ids.popleft()


@runtime_checkable
class DirectEndpoint(Protocol):
    """A plain ASGI endpoint that can also answer for `EdgeMiddleware`, adding the edge's headers itself.

    `respond` must not raise once it has sent the response's start (the health endpoints compute
    their answer first, then send): if it raises, the edge answers with the 500.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    async def respond(self, scope: Scope, send: Send, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Answer the request, adding `headers` to the response; return its status and body size."""
        ...


class DirectRoutes:
    """Routes to `DirectEndpoint`s without path parameters, chosen by exact path and method as the router would.

    The routes must come first in the application's routes, so that the router would pick them
    too; a method they do not allow, a `root_path`, or any other path is left to the router.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.table: dict[str, tuple[Route, DirectEndpoint, frozenset[str]]] = {}
        for route in routes:
            if not isinstance(route, Route) or route.param_convertors or route.app is not route.endpoint:
                raise ValueError(f"Not a plain ASGI route without path parameters: {route!r}")
            if not isinstance(route.app, DirectEndpoint):
                raise ValueError(f"Not a DirectEndpoint (no respond method): {route!r}")
            self.table.setdefault(route.path, (route, route.app, frozenset(route.methods or ())))

    def match(self, scope: Scope) -> DirectEndpoint | None:
        """The endpoint for an HTTP request (recorded in `scope` as the router records it), or None."""
        target = self.table.get(scope["path"])
        if target is None or scope.get("root_path"):
            return None
        route, endpoint, methods = target
        if methods and scope["method"] not in methods:
            return None  # the router answers 405
        scope["route"], scope["endpoint"], scope["path_params"] = route, endpoint, {}
        return endpoint


class _Response:
    """What was sent of a response: its status (0 until it starts) and its body's size."""

    __slots__ = ("size", "status")

    def __init__(self) -> None:
        self.status = 0
        self.size = 0


class EdgeMiddleware:
    """The outermost layer: what every HTTP request gets, once, around one wrapped `send`.

    - Its id: a well-formed inbound `X-Request-ID`, or a new one; in `svc.context.request_id`
      for logs and error bodies, and echoed on the response.
    - Its head's limits: more than `MAX_HEADER_COUNT` fields or `MAX_HEADER_BYTES` bytes is a 431.
    - The response headers every answer carries (`headers`: the security headers, from `create_app`).
    - The last resort: an exception that escaped everything inside is logged, its text never
      sent, and answered with a problem+json 500 (which carries the headers above too).
    - Its record: `metrics` counts and times it, `access_log` writes its line, each with the
      status, route template and duration (and bytes sent) taken here.

    These were four pure-ASGI classes. Each layer costs a request a coroutine call and, when it
    watches the response, a `send` wrapper awaited twice: inside uvicorn, merging them saved a few
    µs of CPU per request, as much as a health endpoint's own work.
    What each concern does lives in its own module (`svc.metrics`, `svc.logging`, `svc.errors`);
    this class only puts them around one call.

    `direct` (the health routes, when nothing between the edge and them has work to do: no Host
    check) are answered from here when the request has no body: their endpoints add the headers
    and report the status themselves (`DirectEndpoint`), so the request skips the inner layers,
    Starlette's routing and the `send` wrapper.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        headers: Iterable[tuple[bytes, bytes]] = (),
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        direct: DirectRoutes | None = None,
    ) -> None:
        self.app = app
        self.headers = list(headers)
        self.metrics = metrics
        self.access_log = access_log
        self.direct = direct
        self.logger = logging.getLogger("svc.errors")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        rid, header, refusal, bodiless = identify(scope["headers"])
        headers = [header, *self.headers]
        direct = self.direct
        endpoint = direct.match(scope) if direct is not None and bodiless and refusal is None else None
        metrics = self.metrics
        token = request_id.set(rid)
        if metrics is not None:
            metrics.in_flight += 1
        response = _Response()
        try:
            if endpoint is None:
                await self.through(scope, receive, send, headers, refusal=refusal, response=response)
            else:
                try:
                    response.status, response.size = await endpoint.respond(scope, send, headers)
                except Exception:  # noqa: BLE001 - logged by `failed`
                    await self.failed(scope, send, headers, response)
        finally:
            try:
                if metrics is not None:
                    metrics.in_flight -= 1
                if metrics is not None or self.access_log is not None:
                    # No response at all (or none begun when cancelled): the server answers 500.
                    self.record(scope, response.status or 500, response.size, time.perf_counter() - start)
            finally:
                request_id.reset(token)

    async def through(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        *,
        refusal: str | None,
        response: _Response,
    ) -> None:
        """The request through the inner layers, `send` wrapped to add `headers` and note what is sent in `response`."""

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                message["headers"] = [*message.get("headers", ()), *headers]
            elif message["type"] == "http.response.body":
                response.size += len(message.get("body", b""))
            await send(message)

        try:
            if refusal is None:
                await self.app(scope, receive, send_with_headers)
            else:
                await send_problem(scope, send_with_headers, 431, refusal)
        except Exception:  # noqa: BLE001 - logged by `failed`
            await self.failed(scope, send, headers, response)

    async def failed(self, scope: Scope, send: Send, headers: list[tuple[bytes, bytes]], response: _Response) -> None:
        """Log the exception being handled and answer a 500 problem, unless the response has begun."""
        # The text of an exception may hold data or secrets: it goes to the log only.
        self.logger.exception("Unhandled error in %s %s", scope["method"], scope["path"])
        if response.status:  # the headers are out: the server closes the connection, and there is nothing else to say
            return
        detail = "The server encountered an unexpected error."
        response.status, response.size = 500, await send_problem(scope, send, 500, detail, headers)

    def record(self, scope: Scope, status: int, size: int, seconds: float) -> None:
        """Tell the metrics and the access log (when on) about an answered request."""
        route = route_template(scope)
        if self.metrics is not None:
            self.metrics.observe(scope["method"], route, status, seconds)
        log = self.access_log
        if log is not None and log.logger.isEnabledFor(logging.INFO):
            log.write(
                scope["method"],
                scope["path"],
                route=route,
                status=status,
                duration_us=int(seconds * 1_000_000),
                size=size,
            )


def identify(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, tuple[bytes, bytes], str | None, bool]:
    """A request's id and `X-Request-ID` header (its own when well-formed), why its head is refused (or None),
    and whether it comes without a body (neither `Content-Length` nor `Transfer-Encoding`)."""
    rid: str | None = None
    size = 0
    bodiless = True
    for name, value in headers:
        size += len(name) + len(value)
        if name == b"x-request-id":
            if rid is None and _VALID_REQUEST_ID.fullmatch(value):
                rid = value.decode()
        elif name in _BODY_HEADERS:
            bodiless = False
    refusal = None
    if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADER_COUNT:
        refusal = f"The request headers exceed {MAX_HEADER_COUNT} fields or {MAX_HEADER_BYTES} bytes."
    if rid is None:
        return (*new_request_id(), refusal, bodiless)
    return rid, (b"x-request-id", rid.encode()), refusal, bodiless


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
                    await send_problem(scope, send, 400, "The Content-Length header is not a number.")
                    return
                if int(value) > self.max_bytes:
                    await send_problem(scope, send, 413, ContentTooLarge.detail)
                    return
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


class DirectRoutesMiddleware:
    """Hand requests for `routes` (plain ASGI endpoints without path parameters) straight to their endpoint.

    Innermost: the request has passed every other middleware. It skips what Starlette does for
    every request it routes (the exception middleware builds a `Request` and wraps `send`; the
    router tries each route's regex in turn), which costs more than the health endpoints
    themselves. The outcome is the router's (see `DirectRoutes`). The endpoints must answer their
    own errors (one that raises gets the edge's 500, not an exception handler's answer).
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.direct = DirectRoutes(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (endpoint := self.direct.match(scope)) is None:
            return await self.app(scope, receive, send)
        await endpoint(scope, receive, send)
