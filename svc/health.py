"""Health endpoints (IETF draft-inadarei-api-health-check-06) as plain ASGI callables.

They skip Starlette's Request/Response machinery: probes call them constantly, so what never
changes is encoded once, and a body that only changes with the clock (to the millisecond) or with
a new database result is encoded once per change and reused by every request in between.

Every response carries `Server-Timing`: `app;dur=` (milliseconds the endpoint took) and, where the
database check ran or was consulted, `db;dur=` (its query's latency).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.types import Receive, Scope, Send

from svc.auth import Access, details_access, send_unauthorized
from svc.clock import utc_now

if TYPE_CHECKING:
    from svc.db import PoolStats
    from svc.migrations import SchemaStatus
    from svc.probe import ProbeResult

__all__ = ["DatabaseHealth", "Health", "Liveness", "Readiness", "server_timing"]

SERVICE_ID = "svc"
DESCRIPTION = "svc: Starlette service foundation on PostgreSQL"
HEALTH_TYPE = b"application/health+json"
POOL_WARN_USAGE = 0.8
_encoder = msgspec.json.Encoder()
_SEVERITY = {"pass": 0, "warn": 1, "fail": 2}
_clock = time.perf_counter


class Check(msgspec.Struct, omit_defaults=True):
    """One entry of a `checks` list."""

    componentType: str  # noqa: N815 - wire names follow the draft
    status: str
    time: str
    observedValue: Any = msgspec.UNSET  # noqa: N815
    observedUnit: str | msgspec.UnsetType = msgspec.UNSET  # noqa: N815
    output: str | msgspec.UnsetType = msgspec.UNSET


class HealthBody(msgspec.Struct, omit_defaults=True):
    """A health response body."""

    status: str
    version: str | msgspec.UnsetType = msgspec.UNSET
    releaseId: str | msgspec.UnsetType = msgspec.UNSET  # noqa: N815
    serviceId: str | msgspec.UnsetType = msgspec.UNSET  # noqa: N815
    description: str | msgspec.UnsetType = msgspec.UNSET
    environment: str | msgspec.UnsetType = msgspec.UNSET
    output: str | msgspec.UnsetType = msgspec.UNSET
    checks: dict[str, list[Check]] | msgspec.UnsetType = msgspec.UNSET


def worst(*statuses: str) -> str:
    return max(statuses, key=_SEVERITY.__getitem__)


# `app;dur=` values for durations under a millisecond, by whole microseconds: formatting a float costs
# more than a health endpoint's own work.
_APP_DUR = [b"app;dur=0.%03d" % us for us in range(1000)]
_db_dur: tuple[float | None, bytes] = (None, b"")


def server_timing(start: float, db_ms: float | None = None) -> bytes:
    """A `Server-Timing` value: `app;dur=` (ms) since `start` (a `perf_counter()` reading), and `db;dur=` if given."""
    global _db_dur
    us = int((_clock() - start) * 1_000_000)
    app = _APP_DUR[us] if us < 1000 else b"app;dur=%d.%03d" % divmod(us, 1000)
    if db_ms is None:
        return app
    cached = _db_dur
    if cached[0] != db_ms:
        cached = _db_dur = (db_ms, b", db;dur=%.3f" % db_ms)
    return app + cached[1]


class Encoded:
    """A body and its `Content-Length`, encoded once."""

    __slots__ = ("body", "length")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = str(len(body)).encode()


#: What an endpoint answers: status, body, and the database latency it consulted (for `db;dur`).
Answer = tuple[int, Encoded, "float | None"]


class Endpoint:
    """Base of the guarded health endpoints: reads settings and runtime objects from `app.state`.

    `app.state` is read through its underlying dict (what Starlette's `State` keeps its attributes
    in): `State.__getattr__` costs more per read than everything else these endpoints do. A
    subclass answers from what is in memory in `answer_now` (no await), or returns None there and
    answers in `answer`, which may wait (for the database).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.respond(scope, send, ())

    async def respond(self, scope: Scope, send: Send, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Answer, adding `headers` to the response (`svc.middleware.DirectEndpoint`); the status and body size."""
        start = _clock()
        values: dict[str, Any] = scope["app"].state._state
        access = details_access(values["settings"], scope)
        if access is Access.DENIED:
            timing = (b"server-timing", server_timing(start))
            return await send_unauthorized(
                scope,
                send,
                b'Bearer realm="health"',
                "The bearer token is not valid for this endpoint.",
                [timing, *headers],
            )
        details = access is Access.SHOWN
        answer = self.answer_now(values, details=details)
        if answer is None:
            answer = await self.answer(values, details=details)
        # Sent from here (no helper coroutine): each coroutine call is a measurable part of a health answer.
        status, encoded, db_ms = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", HEALTH_TYPE),
                    (b"cache-control", b"no-store"),
                    (b"content-length", encoded.length),
                    (b"server-timing", server_timing(start, db_ms)),
                    *headers,
                ],
            }
        )
        body = b"" if scope["method"] == "HEAD" else encoded.body
        await send({"type": "http.response.body", "body": body})
        return status, len(body)

    def answer_now(self, values: dict[str, Any], *, details: bool) -> Answer | None:
        """The answer from memory, or None when it needs `answer`."""
        return None

    async def answer(self, values: dict[str, Any], *, details: bool) -> Answer:
        raise NotImplementedError


class Liveness:
    """`/health/live`: the process answers. No I/O, ever."""

    BODY = _encoder.encode(HealthBody(status="pass"))
    _LENGTH = str(len(BODY)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.respond(scope, send, ())

    async def respond(self, scope: Scope, send: Send, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Answer, adding `headers` to the response (`svc.middleware.DirectEndpoint`); the status and body size."""
        start = _clock()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", HEALTH_TYPE),
                    (b"cache-control", b"no-store"),
                    (b"content-length", self._LENGTH),
                    (b"server-timing", server_timing(start)),
                    *headers,
                ],
            }
        )
        body = b"" if scope["method"] == "HEAD" else self.BODY
        await send({"type": "http.response.body", "body": body})
        return 200, len(body)


def migrations_check(schema: SchemaStatus, *, details: bool) -> Check:
    check = Check("datastore", schema.status, schema.time)
    if details:
        check.observedValue = schema.observed()
        if schema.output is not None:
            check.output = schema.output
    return check


def database_checks(
    result: ProbeResult,
    pool: PoolStats | None,
    *,
    details: bool,
    schema: SchemaStatus | None = None,
    now: str | None = None,
) -> dict[str, list[Check]]:
    """The database entries of `checks`; `pool` is needed (and read) only with `details`; `now` is the pool's time."""
    latency = Check("datastore", result.status, result.time)
    if not details:
        checks = {"postgresql:responseTime": [latency]}
        if schema is not None:
            checks["postgresql:migrations"] = [migrations_check(schema, details=False)]
        return checks
    assert pool is not None, "the pool's counters are part of the details"
    pool_status = "warn" if pool.usage > POOL_WARN_USAGE else "pass"
    if result.latency_ms is not None:
        latency.observedValue, latency.observedUnit = result.latency_ms, "ms"
    if result.output is not None:
        latency.output = result.output
    connections = Check(
        "datastore",
        pool_status,
        utc_now() if now is None else now,
        observedValue={
            "size": pool.size,
            "checkedIn": pool.checked_in,
            "checkedOut": pool.checked_out,
            "overflow": pool.overflow,
            "maxOverflow": pool.max_overflow,
        },
    )
    if pool_status == "warn":
        connections.output = f"Pool use above {POOL_WARN_USAGE:.0%}."
    checks = {"postgresql:responseTime": [latency], "postgresql:connections": [connections]}
    if result.server_version is not None:
        checks["postgresql:version"] = [
            Check("datastore", result.status, result.time, observedValue=result.server_version)
        ]
    if schema is not None:
        checks["postgresql:migrations"] = [migrations_check(schema, details=True)]
    return checks


async def schema_status(values: dict[str, Any], result: ProbeResult) -> SchemaStatus | None:
    """The schema check: from memory once at head, or while the database check fails; else (re-)read."""
    last: SchemaStatus | None = values["schema"].last
    if (last is not None and last.status == "pass") or result.status == "fail":
        return last
    status: SchemaStatus = await values["schema"].check()
    return status


class _Cache:
    """The last body built for one key (compared by value; results compare by identity first), and its status."""

    __slots__ = ("encoded", "key", "status")

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.encoded = Encoded(b"")
        self.status = 200


#: How long `/health/ready` and `/health/db` wait for the lifespan's background start-up (imports, engine)
#: before answering 503 'Starting up.': it takes a fraction of a second, so they normally wait and then check.
STARTUP_WAIT_S = 2.0


async def wait_started(values: dict[str, Any]) -> str:
    """The phase, once the lifespan's background start-up has finished (waiting up to `STARTUP_WAIT_S`)."""
    phase: str = values["phase"]
    if phase == "starting" and (startup := values.get("startup")) is not None:
        await asyncio.wait({startup}, timeout=STARTUP_WAIT_S)
        phase = values["phase"]
    return phase


def not_serving(phase: str) -> str | None:
    """Why the service is not ready in `phase`, or None while serving."""
    if phase == "serving":
        return None
    if phase == "draining":
        return "Shutting down."
    if phase == "failed":
        return "Start-up failed (see the log)."
    return "Starting up."


# Stand-ins encoded into a /health template, replaced by the current time and uptime (msgspec
# escapes the NULs, so they cannot occur in any other part of a body).
_NOW = "\x00now\x00"
_UPTIME = "\x00uptime\x00"
_NOW_JSON = _encoder.encode(_NOW)
_UPTIME_JSON = _encoder.encode(_UPTIME)


class _HealthCache:
    """For one details setting: the template for the last results, and the body made from it this millisecond."""

    __slots__ = ("encoded", "key", "ms", "template")

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.template = b""
        self.ms = -1
        self.encoded = Encoded(b"")


class Health(Endpoint):
    """`/health`: service identity, uptime, and the last database and schema results (from cache, no query).

    The body is encoded once per change of the last results (and, with details, of the pool's
    counters) as a template; each millisecond, the current time and uptime are put into it, and
    every request within that millisecond gets the same bytes.
    """

    def __init__(self) -> None:
        self._caches = {True: _HealthCache(), False: _HealthCache()}

    def answer_now(self, values: dict[str, Any], *, details: bool) -> Answer:
        probe = values.get("probe")
        last: ProbeResult | None = None if probe is None else probe.last
        schema: SchemaStatus | None = None if last is None else values["schema"].last
        pool = values["db"].pool_stats() if details and last is not None else None
        key = (last, schema, pool)
        cache = self._caches[details]
        if cache.key != key:
            cache.template, cache.key, cache.ms = self.encode(values, last, schema, pool, details=details), key, -1
        ms = time.time_ns() // 1_000_000
        if cache.ms != ms:
            uptime = round(time.monotonic() - values["started_monotonic"], 3)
            body = cache.template.replace(_NOW_JSON, _encoder.encode(utc_now())).replace(
                _UPTIME_JSON, _encoder.encode(uptime)
            )
            cache.encoded, cache.ms = Encoded(body), ms
        return 200, cache.encoded, None if last is None else last.latency_ms

    @staticmethod
    def encode(
        values: dict[str, Any],
        last: ProbeResult | None,
        schema: SchemaStatus | None,
        pool: PoolStats | None,
        *,
        details: bool,
        now: str = _NOW,
        uptime: float | str = _UPTIME,
    ) -> bytes:
        """The body; by default a template, with stand-ins for the current time and uptime."""
        settings = values["settings"]
        checks = {"uptime": [Check("system", "pass", now, observedValue=uptime, observedUnit="s")]}
        status = "pass"
        if last is not None:
            checks.update(database_checks(last, pool, details=details, schema=schema, now=now))
            ok = last.status == "pass" and (schema is None or schema.status == "pass")
            status = "pass" if ok else "warn"
        body = HealthBody(
            status=status,
            version=settings.app_version.split(".")[0],
            releaseId=settings.app_version,
            serviceId=SERVICE_ID,
            description=DESCRIPTION,
            environment=str(settings.app_env),
            checks=checks,
        )
        return _encoder.encode(body)


def failure(output: str, *, details: bool) -> Encoded:
    """A `fail` body, saying why only with details."""
    return Encoded(_encoder.encode(HealthBody(status="fail", output=output) if details else HealthBody(status="fail")))


_STARTING = {True: failure("Starting up.", details=True), False: failure("Starting up.", details=False)}


class DatabaseHealth(Endpoint):
    """`/health/db`: a bounded, single-flight, cached database check. 503 on `fail`.

    `postgresql:migrations` is `warn` while the schema is not at the scripts' head. Between two
    measurements (`HEALTH_DB_CACHE_TTL`) the body is reused unless details show the pool's counters.
    """

    def __init__(self) -> None:
        self._caches = {True: _Cache(), False: _Cache()}

    def answer_now(self, values: dict[str, Any], *, details: bool) -> Answer | None:
        probe = values.get("probe")
        if probe is None or values["phase"] == "starting":
            return None
        result = probe.fresh()
        if result is None:
            return None
        schema: SchemaStatus | None = values["schema"].last
        if result.status != "fail" and (schema is None or schema.status != "pass"):
            return None  # the schema check may read the database
        return self.encoded(result, schema, values, details=details)

    async def answer(self, values: dict[str, Any], *, details: bool) -> Answer:
        probe = values.get("probe")
        if probe is None or values["phase"] == "starting":
            phase = await wait_started(values)
            probe = values.get("probe")
            if probe is None or phase == "starting":
                why = not_serving(phase) or "Starting up."
                return 503, _STARTING[details] if why == "Starting up." else failure(why, details=details), None
        result: ProbeResult = await probe.check()
        return self.encoded(result, await schema_status(values, result), values, details=details)

    def encoded(
        self, result: ProbeResult, schema: SchemaStatus | None, values: dict[str, Any], *, details: bool
    ) -> Answer:
        pool: PoolStats | None = None
        key: tuple[Any, ...] = (result, schema)
        if details:
            pool = values["db"].pool_stats()
            key = (result, schema, pool, time.time_ns() // 1_000_000)  # the pool's check carries a time
        cache = self._caches[details]
        if cache.key != key:
            body = self.body(result, schema, pool, details=details)
            cache.encoded, cache.key = Encoded(_encoder.encode(body)), key
            cache.status = 503 if body.status == "fail" else 200
        return cache.status, cache.encoded, result.latency_ms

    @staticmethod
    def body(result: ProbeResult, schema: SchemaStatus | None, pool: PoolStats | None, *, details: bool) -> HealthBody:
        checks = database_checks(result, pool, details=details, schema=schema)
        status = worst(*(entry.status for entries in checks.values() for entry in entries))
        body = HealthBody(status=status, serviceId=SERVICE_ID, checks=checks)
        output = result.output if result.output is not None else schema.output if schema is not None else None
        if details and output is not None:
            body.output = output
        return body


_READY = Encoded(_encoder.encode(HealthBody(status="pass")))


class Readiness(Endpoint):
    """`/health/ready`: 200 only while started, not draining, the database answers, and its schema is at head."""

    def answer_now(self, values: dict[str, Any], *, details: bool) -> Answer | None:
        if values["phase"] != "serving":
            return None
        result = values["probe"].fresh()
        schema: SchemaStatus | None = values["schema"].last
        if result is None or result.status == "fail" or schema is None or schema.status != "pass":
            return None
        return 200, _READY, result.latency_ms

    async def answer(self, values: dict[str, Any], *, details: bool) -> Answer:
        phase = values["phase"]
        if phase == "starting":
            phase = await wait_started(values)
        output = not_serving(phase)
        db_ms: float | None = None
        if output is None:
            result: ProbeResult = await values["probe"].check()
            db_ms = result.latency_ms
            output = result.output if result.status == "fail" else None
            if output is None and (schema := await schema_status(values, result)) is not None:
                output = schema.output
        if output is None:
            return 200, _READY, db_ms
        return 503, failure(output, details=details), db_ms
