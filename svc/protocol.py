"""uvicorn's httptools protocol, bounded against hostile clients: `uvicorn svc.app:app --http svc.protocol:HttpProtocol`.

uvicorn's own protocol lets one client take a process down: it parses and queues every pipelined
request it receives, bounds a request head only once the whole head is in memory (joining its
pieces by repeated copying), and keeps a connection that sends nothing, or half a head, open for
ever. `HttpProtocol` adds, with the limits read once per process from the environment:

- `HTTP_MAX_HEAD_BYTES`: the request line and header fields are counted as their bytes arrive; one
  byte more and the head is refused with a 431 problem and the connection closed, before the rest
  is read. A head that begins in the same read as the end of the request before it is counted from
  the next read on, and measured once complete.
- `HTTP_HEAD_TIMEOUT`: a request head must be complete within this time of the connection opening
  or of the previous response ending, however slowly its bytes trickle in: else a 408 problem and close.
- `HTTP_KEEPALIVE_TIMEOUT`: a connection on which nothing arrives this long after it opened or
  after its last response is closed (uvicorn's `--timeout-keep-alive` no longer applies).
- `HTTP_MAX_PIPELINED`: requests received ahead of their answers (pipelined) are queued up to
  this many, with reading paused until they are answered. httptools parses a whole read at once and
  cannot stop between two requests: a client that sends more than that in one read gets the queued
  ones answered and then the connection closed (RFC 9112 §9.3.2: it must retry the rest).
- `HTTP_MAX_CONNECTIONS`: at the limit, a new connection takes the place of the connection idle
  the longest (waiting for a request, with no request being answered), which is closed; when none
  is idle it gets a 503 problem and is closed. The limit is lowered to fit the open-files limit,
  whose soft value is raised towards it first.

The answers close the connection gracefully: what the client still sends is read and dropped for a
moment (`LINGER_SECONDS`, `LINGER_BYTES`), so that closing does not reset the connection before the
client has read the answer. Each limit logs on `svc.http` when it acts, at most once per
`LOG_INTERVAL` per limit, with how many times it acted (`limit`, `count`).

The normal path pays a few attribute updates per request, and one timer per connection re-armed only
when it fires (uvicorn's protocol arms and cancels one per request): about 0.5 µs a request more
than uvicorn's protocol, measured in-process (`bench/load.py` compares the two). The class relies on uvicorn's `HttpToolsProtocol` internals (`pipeline`, `cycle`,
`flow`, `parser`): tests/test_hostile_clients.py runs each limit against a real server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from svc.errors import PROBLEM_TYPE, problem_response
from svc.settings import Settings, load_settings

__all__ = ["HttpLimits", "HttpProtocol", "process_limits"]

logger = logging.getLogger("svc.http")

#: Seconds between two log lines of the same limit.
LOG_INTERVAL = 10.0
#: How long, and how many bytes at most, a closing connection's input is read and dropped after its last answer.
LINGER_SECONDS = 1.0
LINGER_BYTES = 65_536
#: File descriptors left for everything but client connections: the database pool, the probe, logs, metrics files.
DESCRIPTOR_RESERVE = 64


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits `HttpProtocol` enforces (see the module's docstring)."""

    max_head_bytes: int
    head_timeout: float
    keepalive_timeout: float
    max_pipelined: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_head_bytes=settings.http_max_head_bytes,
            head_timeout=settings.http_head_timeout,
            keepalive_timeout=settings.http_keepalive_timeout,
            max_pipelined=settings.http_max_pipelined,
            max_connections=settings.http_max_connections,
        )


@functools.cache
def process_limits() -> HttpLimits:
    """This process's limits: read from the environment once, the connection limit fitted to the open-files limit."""
    limits = HttpLimits.from_settings(load_settings())
    fitting = open_files_limit(limits.max_connections + DESCRIPTOR_RESERVE) - DESCRIPTOR_RESERVE
    if fitting < limits.max_connections:
        fitting = max(fitting, 1)
        logger.warning(
            "HTTP_MAX_CONNECTIONS lowered from %d to %d: the open-files limit leaves no more",
            limits.max_connections,
            fitting,
        )
        limits = dataclasses.replace(limits, max_connections=fitting)
    return limits


def open_files_limit(wanted: int) -> int:
    """Raise the soft open-files limit to `wanted` if it is lower (up to the hard limit); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):
        return soft
    return raised


class _Throttle:
    """Logs each limit at most once per `interval` seconds, with how many times it acted since its previous line."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def acted(self, limit: str, level: int, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(limit)
        if last is None or now - last >= self.interval:
            self._log(limit, level, message, self._held.get(limit, 0) + 1, now)
            return
        held = self._held[limit] = self._held.get(limit, 0) + 1
        if held == 1:  # the first held back: report it, and those after it, when the interval is over
            asyncio.get_running_loop().call_later(last + self.interval - now, self._flush, limit, level, message)

    def _flush(self, limit: str, level: int, message: str) -> None:
        if count := self._held.get(limit, 0):
            self._log(limit, level, message, count, time.monotonic())

    def _log(self, limit: str, level: int, message: str, count: int, now: float) -> None:
        self._held[limit] = 0
        self._last[limit] = now
        logger.log(level, "%s (%d since the previous report)", message, count, extra={"limit": limit, "count": count})


_throttle = _Throttle(LOG_INTERVAL)

#: Connections of this process waiting for a request head (none being answered), the one idle longest first.
#: One uvicorn server per process: the connection limit counts its connections.
_idle: dict[HttpProtocol, None] = {}


class _Stopped(Exception):
    """Raised from a parser callback to stop httptools in the middle of a read (it has no other way)."""


class _Lingering(asyncio.Protocol):
    """A connection after its last answer: what the client still sends is dropped, then the connection is closed.

    Closing a socket with unread input resets the connection, and the client may lose the answer.
    The connection is closed when the client closes its side, after `LINGER_BYTES` or after `LINGER_SECONDS`.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.left = LINGER_BYTES
        self.timer = loop.call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.transport.close()

    def eof_received(self) -> None:
        """Returns None: the transport closes."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()


def answer_and_close(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, response: bytes) -> None:
    """Write `response`, the connection's last, and close it gracefully (see `_Lingering`)."""
    transport.write(response)
    transport.set_protocol(_Lingering(transport, loop))
    if transport.can_write_eof():
        transport.write_eof()
    transport.resume_reading()


def problem_bytes(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole `Connection: close` HTTP/1.1 response with a problem+json body, for answers outside any request."""
    body = problem_response(status, http.HTTPStatus(status).phrase, detail, "").body
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head.append(
        b"content-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (PROBLEM_TYPE.encode(), len(body))
    )
    return b"".join([*head, body])


class _GatedFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while the protocol says so."""

    def __init__(self, transport: asyncio.Transport, protocol: HttpProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if self.read_paused and self._protocol.may_read():
            super().resume_reading()


class HttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with the limits of `process_limits()`; uvicorn makes one per connection."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits = process_limits()
        self._max_head = limits.max_head_bytes
        self._max_pipelined = limits.max_pipelined
        # Bytes of the head in progress received so far; meaningful while `_in_head` (between requests or in a head).
        self._head_bytes = 0
        self._in_head = True
        # A request ended in the read being parsed: a head completed after it began in that read, after the read
        # was counted (`_head_bytes` counts from the start of a read), so it is measured once complete instead.
        self._ended_in_read = False
        # Waiting for a request head: no request being answered or queued. `_since`: since when; `_heard`: bytes came.
        self._waiting = True
        self._since = 0.0
        self._heard = False
        self._timer: asyncio.TimerHandle | None = None
        # Nothing more is read or parsed: the connection closes once the requests already parsed are answered.
        self._stopped = False

    # --- Connection -----------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            _throttle.acted(
                "max_connections",
                logging.WARNING,
                f"HTTP_MAX_CONNECTIONS ({self.limits.max_connections}) connections open and none idle: "
                "refused a new one with 503",
            )
            detail = "The server has too many open connections. Try again later."
            answer_and_close(transport, self.loop, problem_bytes(503, detail, self.server_state.default_headers))
            return
        super().connection_made(transport)
        self.flow = _GatedFlow(transport, self)
        self._await_head()

    def _make_room(self) -> bool:
        """Close the connection idle the longest, if any is."""
        oldest = next(iter(_idle), None)
        if oldest is None:
            return False
        _throttle.acted(
            "max_connections_idle",
            logging.WARNING,
            f"HTTP_MAX_CONNECTIONS ({self.limits.max_connections}) connections open: "
            "closed the one idle longest for a new one",
        )
        oldest._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        super().connection_lost(exc)

    def _leave(self) -> None:
        """Stop counting this connection: not idle, not open, no timer."""
        _idle.pop(self, None)
        self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        """Close now, counted as closed at once (the transport reports it later)."""
        self._leave()
        self.transport.close()

    def _answer_and_close(self, status: int, detail: str) -> None:
        """Answer outside any request (none is being answered) and close."""
        self._stopped = True
        self._leave()
        answer_and_close(self.transport, self.loop, problem_bytes(status, detail, self.server_state.default_headers))

    def _busy(self) -> bool:
        """Whether a request parsed on this connection is being answered or waits to be."""
        cycle: RequestResponseCycle | None = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _stop(self) -> None:
        """Read and parse nothing more; close once the requests already parsed are answered."""
        self._stopped = True
        self.flow.pause_reading()
        if not self._busy():
            self._close()

    def may_read(self) -> bool:
        """Whether reading may resume: not stopped, room in the pipeline, no queued request's body piling up."""
        pipeline = self.pipeline
        return (
            not self._stopped
            and len(pipeline) < self._max_pipelined
            and not (pipeline and len(self.cycle.body) > HIGH_WATER_LIMIT)
        )

    # --- Waiting for a request head: HTTP_KEEPALIVE_TIMEOUT and HTTP_HEAD_TIMEOUT ---------------------------------

    def _await_head(self) -> None:
        self._waiting = True
        self._heard = False
        self._since = self.loop.time()
        _idle[self] = None
        if self._timer is None:
            limits = self.limits
            self._timer = self.loop.call_later(min(limits.keepalive_timeout, limits.head_timeout), self._watch)

    def _watch(self) -> None:
        """The timer: act on an expired wait, or sleep until the wait's deadline.

        Requests answered in between do not re-arm it (that would cost every request a timer); it sleeps
        again until the deadline of the wait in progress when it fires.
        """
        self._timer = None
        if not self._waiting:
            return  # `_await_head` re-arms it once the request is answered
        limits = self.limits
        left = self._since + (limits.head_timeout if self._heard else limits.keepalive_timeout) - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._watch)
        elif self._heard:
            _throttle.acted(
                "head_timeout",
                logging.WARNING,
                f"A request head took longer than HTTP_HEAD_TIMEOUT ({limits.head_timeout:g} s): "
                "answered 408 and closed the connection",
            )
            self._answer_and_close(408, f"The request head did not arrive within {limits.head_timeout:g} seconds.")
        else:
            cycle: RequestResponseCycle | None = self.cycle
            if cycle is None:  # no request yet
                _throttle.acted(
                    "keepalive_timeout",
                    logging.INFO,
                    f"A connection sent nothing within HTTP_KEEPALIVE_TIMEOUT ({limits.keepalive_timeout:g} s): "
                    "closed it",
                )
            self._close()

    # --- Reading: HTTP_MAX_HEAD_BYTES ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._ended_in_read = False
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._receive_past_head_limit(data)
                return
        self._parse(data)

    def _receive_past_head_limit(self, data: bytes) -> None:
        """`data` (counted) takes the head in progress past the limit: parse what fits; refuse the head if it is
        still open, else go on with the rest (body, or requests after it) as `data_received` does."""
        while True:
            fits = len(data) - (self._head_bytes - self._max_head)
            self._head_bytes = self._max_head  # reset (to 0) if the head completes in what fits
            if fits > 0:
                self._parse(data[:fits])
                if self.transport.is_closing() or self._stopped:
                    return
            if self._in_head and self._head_bytes == self._max_head:
                self._refuse_head()
                return
            data = data[fits:]
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head:
                    continue
            self._parse(data)
            return

    def _refuse_head(self) -> None:
        _throttle.acted(
            "max_head_bytes",
            logging.WARNING,
            f"A request head exceeded HTTP_MAX_HEAD_BYTES ({self._max_head}): refused with 431, connection closed",
        )
        if self._busy():  # an answer now would come before those of earlier requests
            self._stop()
        else:
            self._answer_and_close(431, f"The request line and header fields exceed {self._max_head} bytes.")

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._stopped:
                return  # a limit stopped the parser on purpose (`_Stopped`)
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

    # --- Parser callbacks: HTTP_MAX_PIPELINED ----------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._waiting = False
        _idle.pop(self, None)
        if len(self.pipeline) >= self._max_pipelined:
            _throttle.acted(
                "max_pipelined",
                logging.WARNING,
                f"A connection sent more than HTTP_MAX_PIPELINED ({self.limits.max_pipelined}) requests ahead of "
                "their answers: closed it after answering those",
            )
            self._stop()
            raise _Stopped
        if self._ended_in_read and len(self.url) + sum(len(n) + len(v) for n, v in self.headers) > self._max_head:
            self._refuse_head()
            raise _Stopped
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._ended_in_read = True

    def on_response_complete(self) -> None:
        # uvicorn's, except that a connection that waits for a head is watched (and the keep-alive timer not armed).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._stopped:
            self._close()
            return
        else:
            self._await_head()
        self.flow.resume_reading()
