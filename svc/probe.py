"""The database health probe: bounded, single-flight, cached, one round trip on its own connection."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from svc.clock import utc_now
from svc.tracing import traced_probe

__all__ = ["DatabaseProbe", "ProbeResult", "utc_now"]

Connect = Callable[[float], Awaitable[Any]]
logger = logging.getLogger("svc.probe")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one database check."""

    status: str  # pass | warn | fail
    time: str
    measured_at: float  # time.monotonic() when measured
    latency_ms: float | None = None  # the query's round trip (connecting, when needed, is not part of it)
    server_version: str | None = None
    output: str | None = None


# What a connection that the server has closed raises. asyncpg reports a FATAL message (such as an
# administrator's shutdown or pg_terminate_backend) that arrives just before a query as an
# InternalClientError ("cannot switch to state ...; another operation is in progress").
_BROKEN_CONNECTION = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
)


def describe_failure(exc: BaseException, timeout: float) -> str:
    """Plain words for an operator; never the URL, user, password or host."""
    if isinstance(exc, TimeoutError):
        return f"PostgreSQL did not answer within {timeout:g} s."
    if isinstance(exc, ConnectionRefusedError):
        return "PostgreSQL refused the connection."
    if isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        return "PostgreSQL rejected the service's credentials."
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return "PostgreSQL is starting up or shutting down."
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return "PostgreSQL has no free connection slots."
    if isinstance(exc, asyncpg.PostgresError):
        return f"PostgreSQL reported an error (SQLSTATE {exc.sqlstate})."
    if isinstance(exc, _BROKEN_CONNECTION):
        return "The connection to PostgreSQL failed."
    return f"The database check failed unexpectedly ({type(exc).__name__})."


def log_transition(previous: ProbeResult | None, new: ProbeResult) -> None:
    """Log a change of the database check once: WARNING when it fails or warns (with the reason), INFO when it passes again.

    A change is one of status, or of the reason while failing (refused, then starting up); a first
    result is one when it is not `pass`. The reason is the result's `output`, which holds no secret.
    """
    if previous is None:
        if new.status == "pass":
            return
    elif previous.status == new.status and (new.status != "fail" or previous.output == new.output):
        return
    was = "" if previous is None else previous.status
    extra = {"check": "postgresql", "status": new.status, "previous_status": was or None}
    if new.status == "pass":
        logger.info("Database check passes again (was %s)", was, extra=extra)
    else:
        logger.warning("Database check %s: %s", "fails" if new.status == "fail" else "warns", new.output, extra=extra)


class DatabaseProbe:
    """Checks the database with `SELECT 1` on a connection of its own, outside the pool.

    A dedicated connection measures the database rather than the pool (an exhausted pool must
    not make the probe wait), and costs exactly one round trip per check. Concurrent callers
    share one in-flight check, and a result is reused for `ttl` seconds. The latency is the
    query's alone: a check that has to (re)connect first still reports what the query took,
    so a slow connect (the first one after start-up, on a loaded machine) is not a `warn`;
    the timeout bounds both. `connect()` opens the connection ahead of the first check.
    """

    def __init__(self, connect: Connect, *, timeout: float, warn_ms: float, ttl: float) -> None:
        self._connect = connect
        self.timeout = timeout
        self.warn_ms = warn_ms
        self.ttl = ttl
        self._conn: Any = None
        self._opening: asyncio.Future[bool] | None = None
        self._inflight: asyncio.Future[ProbeResult] | None = None
        self.last: ProbeResult | None = None

    def fresh(self) -> ProbeResult | None:
        """The last result while it is within `ttl` (no await needed), else None."""
        last = self.last
        if last is not None and time.monotonic() - last.measured_at < self.ttl:
            return last
        return None

    async def check(self, deadline: float | None = None) -> ProbeResult:
        """The last result while fresh, else the result of a check (one in flight, shared by every caller).

        `deadline` (an event-loop time) bounds the wait: a caller whose budget ends first gets a
        `fail` ("did not answer"), which is also the last result until the check in flight ends, so
        every answer of the service tells the same story.
        """
        last = self.last
        if last is not None and time.monotonic() - last.measured_at < self.ttl:
            return last
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._measure())
            # A fresh context: the request that started the check is not what its log line is about.
            self._inflight.add_done_callback(self._finished, context=contextvars.Context())
        try:
            async with asyncio.timeout_at(deadline):
                # Shielded: a caller that goes away must not cancel the check others are waiting for.
                return await asyncio.shield(self._inflight)
        except TimeoutError:
            result = ProbeResult(
                "fail", utc_now(), time.monotonic(), output=describe_failure(TimeoutError(), self.timeout)
            )
            self._record(result)
            return result

    def _finished(self, future: asyncio.Future[ProbeResult]) -> None:
        self._inflight = None
        if not future.cancelled():
            self._record(future.result())

    def _record(self, result: ProbeResult) -> None:
        previous, self.last = self.last, result
        log_transition(previous, result)

    def open_soon(self) -> None:
        """Start opening the probe's connection in the background (at start-up): the first check then
        measures a query, not a connect. A check that comes meanwhile waits for this connection."""
        if self._opening is None and (self._conn is None or self._conn.is_closed()):
            self._opening = asyncio.ensure_future(self._open())

    async def connect(self) -> bool:
        """Open the probe's connection now, within `timeout`; False if that failed.

        A failure is not reported: the next check connects again and says what went wrong.
        """
        self.open_soon()
        if self._opening is None:
            return True
        return await asyncio.shield(self._opening)

    async def _open(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                self._conn = await self._connect(self.timeout)
            return True
        except Exception:  # noqa: BLE001 - whatever it was, the next check meets it again and describes it
            return False
        finally:
            self._opening = None

    @traced_probe  # a child span of the request that started the check, when it is traced
    async def _measure(self) -> ProbeResult:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                version, seconds = await self._select_one(deadline=start + self.timeout)
        except BaseException as exc:
            await self._drop()
            if not isinstance(exc, Exception):  # cancelled (shutdown), SystemExit, KeyboardInterrupt
                raise
            return ProbeResult("fail", utc_now(), time.monotonic(), output=describe_failure(exc, self.timeout))
        latency_ms = round(seconds * 1000, 3)
        status = "warn" if latency_ms > self.warn_ms else "pass"
        output = f"Response time {latency_ms:g} ms exceeds {self.warn_ms:g} ms." if status == "warn" else None
        return ProbeResult(status, utc_now(), time.monotonic(), latency_ms, version, output)

    async def _select_one(self, deadline: float) -> tuple[str, float]:
        """`SELECT 1` on the probe's connection (opened if needed): the server's version, and the query's seconds."""
        if self._opening is not None:  # `connect()` is opening it: use that connection
            await asyncio.shield(self._opening)
        reused = self._conn is not None and not self._conn.is_closed()
        if not reused:
            self._conn = await self._connect(max(0.001, deadline - time.perf_counter()))
        try:
            start = time.perf_counter()
            await self._conn.execute("SELECT 1")
        except _BROKEN_CONNECTION:
            if not reused:
                raise
            # The server restarted (or ended this backend) since the last check: one fresh connection
            # within the same deadline.
            await self._drop()
            self._conn = await self._connect(max(0.001, deadline - time.perf_counter()))
            start = time.perf_counter()
            await self._conn.execute("SELECT 1")
        seconds = time.perf_counter() - start
        version: str = self._conn.get_settings().server_version
        return version.split(" ", 1)[0], seconds

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Stop a check in progress and close the probe's connection (at shutdown)."""
        pending = {f for f in (self._inflight, self._opening) if f is not None}
        for future in pending:
            future.cancel()
        if pending:
            # Let them unwind (they terminate their connection attempts) while the loop still runs.
            await asyncio.wait(pending, timeout=1)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(1):
                    await conn.close()
            except (TimeoutError, asyncpg.PostgresError, *_BROKEN_CONNECTION):
                conn.terminate()
