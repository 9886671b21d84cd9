"""The edge: what every HTTP request gets, once, whichever route answers it.

    request ─▶ Edge: id, head limits, Host check, body limit ─▶ Router.match ─▶ endpoint(request)
    response ◀─ Edge: Server-Timing, X-Request-ID, security headers; metrics and access line ◀─┘

An svc `Route`'s endpoint returns its response and the edge sends it: no layer wraps `send`. Anything else routed (a plain ASGI app, a `Mount`, a streaming response) sends for
itself through one wrapper that adds the same headers. Whatever escapes an endpoint is rendered by
`svc.errors.render`; nothing else in svc answers an HTTP request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextvars import Token
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from svc.context import UNMATCHED, Trace, TraceContext, current
from svc.errors import BadRequest, ContentTooLarge, HeaderFieldsTooLarge, ServiceError, render
from svc.http.headers import security_headers
from svc.http.hosts import AllowedHosts, allows_any_host
from svc.http.request_id import HEADER, new_request_id, well_formed
from svc.http.routing import Router, Target
from svc.settings import Settings
from svc.tracing import incoming

if TYPE_CHECKING:
    from svc.access import AccessLog
    from svc.metrics import Metrics
    from svc.otel import Tracing
    from svc.tracing import ServerSpan

__all__ = ["MAX_HEADER_BYTES", "MAX_HEADER_COUNT", "Edge", "server_timing"]

# uvicorn's httptools parser accepts request heads of any size; these are nginx's and Node's defaults, far above
# what any real client sends, and refusing early bounds the work and memory a request can demand.
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 16_384
HOST_DETAIL = "The Host header does not name a host this server answers to."
_HEAD_DETAIL = f"The request headers exceed {MAX_HEADER_COUNT} fields or {MAX_HEADER_BYTES} bytes."

logger = logging.getLogger("svc.errors")
_clock = time.perf_counter
# `app;dur=` values under a millisecond, by whole microseconds: formatting a float per request costs more.
_APP_DUR = [b"app;dur=0.%03d" % us for us in range(1000)]


def server_timing(start: float) -> bytes:
    """A `Server-Timing` value: `app;dur=` milliseconds since `start` (a `time.perf_counter()` reading)."""
    us = int((_clock() - start) * 1_000_000)
    return _APP_DUR[us] if us < 1000 else b"app;dur=%d.%03d" % divmod(us, 1000)


# Control characters (and DEL) in a logged header value become "?": a log line is never a terminal escape.
_CONTROL = dict.fromkeys([*range(32), 127], "?")
#: At most this many characters of a User-Agent are logged.
MAX_USER_AGENT = 256


def user_agent(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The request's User-Agent for the access line: ASCII, bounded, control characters replaced."""
    for name, value in headers:
        if name == b"user-agent":
            return value[:MAX_USER_AGENT].decode("ascii", "backslashreplace").translate(_CONTROL)
    return None


def tracestate(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The request's `tracestate`, its fields joined by commas (RFC 9110 list syntax); None without one."""
    values = [value for name, value in headers if name == b"tracestate"]
    return b",".join(values) if values else None


class _Passthrough:
    """A `send` for an app that sends for itself: the edge's headers added, what is sent noted.

    `status` is 0 until the response starts; `size` counts body bytes sent (none for HEAD).
    """

    __slots__ = ("head", "headers", "send", "size", "start", "status")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]], start: float, *, head: bool) -> None:
        self.send = send
        self.headers = headers
        self.start = start
        self.head = head
        self.status = 0
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            timing = (b"server-timing", server_timing(self.start))
            message["headers"] = [*message.get("headers", ()), timing, *self.headers]
        elif message["type"] == "http.response.body" and not self.head:
            self.size += len(message.get("body", b""))
        await self.send(message)


class Edge:
    """The ASGI entry of every HTTP and WebSocket request (lifespan messages go to the lifespan).

    - Its id: a well-formed inbound `X-Request-ID`, or a new one; in `svc.context.current` for
      logs and problem bodies, and echoed on the response.
    - Its trace context, in `svc.context.current` for logs: with `tracing`, the request's server span
      (a child of a valid inbound `traceparent`, else a new trace); without, a valid inbound
      `traceparent` as it came (nothing when there is none). An invalid one is ignored, never echoed.
    - Its refusals, before any endpoint runs: a head over `MAX_HEADER_COUNT` fields or
      `MAX_HEADER_BYTES` bytes (431), a `Host` outside `ALLOWED_HOSTS` (400), a `Content-Length`
      that is not a number (400) or over `MAX_BODY_BYTES` (413); a streamed body is cut off at
      `MAX_BODY_BYTES` (413 when nothing was sent yet).
    - Its route, from the `Router` (404, or 405 with `Allow`).
    - The headers every response carries: `Server-Timing: app;dur=`, `X-Request-ID`, the security headers.
    - The last resort: an exception is logged, its text never sent, and answered with a problem
      (500 unless it is a `ServiceError`) unless the response has begun.
    - Its record: `metrics` counts and times it (with the trace id of a recorded span as the exemplar),
      `access_log` writes its line (HEAD bodies count 0 bytes), `tracing` ends its span.
    """

    def __init__(
        self,
        router: Router,
        settings: Settings,
        *,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        tracing: Tracing | None = None,
    ) -> None:
        self.router = router
        self.headers = security_headers(settings)
        self.hosts = None if allows_any_host(settings.allowed_hosts) else AllowedHosts(settings.allowed_hosts)
        self.max_body_bytes = settings.max_body_bytes
        self.metrics = metrics
        self.access_log = access_log
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.websocket(scope, receive, send)
        start = _clock()
        rid, rid_header, refusal, streamed, context = self.inspect(scope["headers"])
        # Its trace: its server span with tracing, else the caller's context (if any) as it came.
        span = None if self.tracing is None else self.tracing.start(scope, context)
        token = current.set((rid, context if span is None else span))
        if self.metrics is not None:
            self.metrics.in_flight += 1
        head = scope["method"] == "HEAD"
        status = size = 0
        passthrough: _Passthrough | None = None
        try:
            response: Response
            try:
                target = self.router.match(scope)
                if refusal is not None or not isinstance(target, Target):
                    raise refusal or target  # type: ignore[misc]
                if streamed:
                    receive = self.limited(receive)
                if target.handler is None:
                    passthrough = _Passthrough(send, [rid_header, *self.headers], start, head=head)
                    return await target.app(scope, receive, passthrough)
                response = await target.handler(Request(scope, receive))
                if not isinstance(getattr(response, "body", None), bytes):  # streaming, file: it sends itself
                    passthrough = _Passthrough(send, [rid_header, *self.headers], start, head=head)
                    return await response(scope, receive, passthrough)
            except Exception as exc:
                if passthrough is not None and passthrough.status:
                    raise  # its response has begun: nothing else can be sent
                response = self.failed(exc, scope, span)
            # The one place svc sends a response: the edge's headers first, the body (none for HEAD).
            status = response.status_code
            body = b"" if head else response.body
            headers = [(b"server-timing", server_timing(start)), rid_header, *self.headers, *response.raw_headers]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            size = len(body)
            if response.background is not None:
                await response.background()
        except Exception:
            # The headers are out: the server closes the connection, and there is nothing else to say.
            logger.exception("Unhandled error in %s %s after its response began", scope["method"], scope["path"])
        finally:
            if passthrough is not None:
                status, size = passthrough.status, passthrough.size
            self.done(scope, status, size, start, token, span)

    @staticmethod
    def failed(exc: Exception, scope: Scope, span: ServerSpan | None) -> Response:
        """The problem that answers `exc` (logged there when unexpected), noted on the request's span."""
        if span is not None:
            span.failed(exc)
        return render(exc, scope)

    def done(  # noqa: PLR0917 - the hot path: positional arguments are the cheapest to pass
        self,
        scope: Scope,
        status: int,
        size: int,
        start: float,
        token: Token[tuple[str, Trace | None] | None],
        span: ServerSpan | None,
    ) -> None:
        """Record the request (metrics, access line, span) and leave its context; no status means none was sent."""
        try:
            metrics = self.metrics
            if metrics is not None:
                metrics.in_flight -= 1
            if metrics is None and self.access_log is None and span is None:
                return
            route = scope.get("route")
            template = UNMATCHED if route is None else getattr(route, "path", UNMATCHED)
            # No response at all (or none begun when cancelled): the server answers 500.
            status, seconds = status or 500, _clock() - start
            exemplar = None
            if span is not None:
                span.finish(scope["method"], template, status)
                exemplar = span.exemplar
            if metrics is not None:
                metrics.observe(scope["method"], template, status, seconds, exemplar)
            log = self.access_log
            if log is not None and log.logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                log.write(
                    scope["method"],
                    scope["path"],
                    route=template,
                    status=status,
                    duration_us=int(seconds * 1_000_000),
                    size=size,
                    client=client[0] if client else None,
                    user_agent=user_agent(scope["headers"]),
                )
        finally:
            current.reset(token)

    def inspect(  # noqa: PLR0912 - one pass reads every header the edge needs
        self, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[str, tuple[bytes, bytes], ServiceError | None, bool, TraceContext | None]:
        """A request's id and `X-Request-ID` header, why it is refused (or None), whether its body is streamed,
        and the caller's trace context (None without a valid `traceparent`; two of them are ambiguous: none)."""
        rid: str | None = None
        size = 0
        streamed = False
        length: bytes | None = None
        hosts: list[bytes] | None = None if self.hosts is None else []
        traceparent: bytes | None = None
        for name, value in headers:
            size += len(name) + len(value)
            if name == HEADER:
                if rid is None and well_formed(value):
                    rid = value.decode()
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                streamed = True
            elif name == b"host" and hosts is not None:
                hosts.append(value)
            elif name == b"traceparent":
                traceparent = value if traceparent is None else b""
        refusal: ServiceError | None = None
        if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADER_COUNT:
            refusal = HeaderFieldsTooLarge(_HEAD_DETAIL)
        elif hosts is not None and self.hosts is not None and not self.hosts.allowed(hosts):
            refusal = BadRequest(HOST_DETAIL)
        elif length is not None:
            if not length.isdigit():
                refusal = BadRequest("The Content-Length header is not a number.")
            elif int(length) > self.max_body_bytes:
                refusal = ContentTooLarge()
        context = None if traceparent is None else incoming(traceparent, tracestate(headers))
        if rid is None:
            return (*new_request_id(), refusal, streamed, context)
        return rid, (HEADER, rid.encode()), refusal, streamed, context

    def limited(self, receive: Receive) -> Receive:
        """`receive`, raising `ContentTooLarge` once the body passes `MAX_BODY_BYTES`."""
        received = 0
        limit = self.max_body_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ContentTooLarge()
            return message

        return receive_limited

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket connection: the Host check, then its route (closed when there is none)."""
        if self.hosts is not None:
            hosts = [value for name, value in scope["headers"] if name == b"host"]
            if not self.hosts.allowed(hosts):
                await send({"type": "websocket.close", "code": 1008})  # policy violation
                return
        app = self.router.websocket(scope)
        if app is None:
            await send({"type": "websocket.close", "code": 1000})
            return
        await app(scope, receive, send)
