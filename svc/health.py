"""Health endpoints (IETF draft-inadarei-api-health-check-06): `/health/live`, `/health`, `/health/db`, `/health/ready`.

Probes call them constantly, so each answer is an `Encoded` response made once per change of what
it says (the database result, the schema status, the millisecond for `/health`'s clock) and
returned as is to every request in between. Every answer that consulted the database check
carries `Server-Timing: db;dur=` (its query's latency).

Each answer is bounded by `HEALTH_DB_TIMEOUT` from the request's arrival, waiting for start-up included.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request

from svc.auth import Access, details_access, unauthorized
from svc.clock import utc_now
from svc.http.responses import Encoded
from svc.runtime import Phase, Runtime

if TYPE_CHECKING:
    from svc.db import PoolStats
    from svc.probe import ProbeResult
    from svc.schema import SchemaStatus

__all__ = ["DatabaseHealth", "Health", "HealthBody", "Liveness", "Readiness"]

SERVICE_ID = "svc"
DESCRIPTION = "svc: Starlette service foundation on PostgreSQL"
HEALTH_TYPE = b"application/health+json"
POOL_WARN_USAGE = 0.8
_NO_STORE = (b"cache-control", b"no-store")
_encoder = msgspec.json.Encoder()
_SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


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


def health_response(body: bytes, status: int = 200, db_ms: float | None = None) -> Encoded:
    """A health+json answer, never cached; `db_ms` becomes `Server-Timing: db;dur=`."""
    headers = [_NO_STORE]
    if db_ms is not None:
        headers.append((b"server-timing", b"db;dur=%.3f" % db_ms))
    return Encoded(body, status, headers, content_type=HEALTH_TYPE)


def failure(output: str, *, details: bool, db_ms: float | None = None) -> Encoded:
    """A 503 `fail` answer, saying why only with details."""
    body = HealthBody(status="fail", output=output) if details else HealthBody(status="fail")
    return health_response(_encoder.encode(body), 503, db_ms)


_PASS = _encoder.encode(HealthBody(status="pass"))


class Liveness:
    """`/health/live`: the process answers. No I/O, ever."""

    def __init__(self) -> None:
        self.response = health_response(_PASS)

    async def __call__(self, request: Request) -> Encoded:
        return self.response


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


class Guarded:
    """Base of the endpoints whose details `HEALTH_SHOW_DETAILS` guards: a wrong token is a 401.

    A subclass answers from memory in `answer_now` (no await), or returns None there and answers
    in `answer`, which may wait for start-up and the database until `deadline` (a `loop.time()`).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, request: Request) -> Encoded:
        access = details_access(self.runtime.settings, request)
        if access is Access.DENIED:
            raise unauthorized('Bearer realm="health"')
        details = access is Access.SHOWN
        response = self.answer_now(details=details)
        if response is None:
            deadline = asyncio.get_running_loop().time() + self.runtime.settings.health_db_timeout
            response = await self.answer(details=details, deadline=deadline)
        return response

    def answer_now(self, *, details: bool) -> Encoded | None:
        """The answer from memory, or None when it needs `answer`."""
        return None

    async def answer(self, *, details: bool, deadline: float) -> Encoded:
        raise NotImplementedError

    async def check_database(self, deadline: float) -> ProbeResult:
        """The probe's result, waited for until `deadline` at most (the check goes on for the next caller)."""
        probe = self.runtime.probe
        assert probe is not None, "checked once started"
        return await probe.check(deadline)

    async def schema_status(self, result: ProbeResult, deadline: float) -> SchemaStatus | None:
        """The schema check: from memory once at head, or while the database check fails; else (re-)read."""
        schema = self.runtime.schema
        assert schema is not None, "checked once started"
        last = schema.last
        if (last is not None and last.status == "pass") or result.status == "fail":
            return last
        try:
            async with asyncio.timeout_at(deadline):
                return await schema.check()
        except TimeoutError:
            return schema.last


# Stand-ins encoded into a /health template, replaced by the current time and uptime (msgspec
# escapes the NULs, so they cannot occur in any other part of a body).
_NOW = "\x00now\x00"
_UPTIME = "\x00uptime\x00"
_NOW_JSON = _encoder.encode(_NOW)
_UPTIME_JSON = _encoder.encode(_UPTIME)


class _HealthCache:
    """For one details setting: the template for the last results, and the answer made from it this millisecond."""

    __slots__ = ("key", "ms", "response", "template")

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.template = b""
        self.ms = -1
        self.response = health_response(b"")


class Health(Guarded):
    """`/health`: service identity, uptime, and the last database and schema results (from memory, no query).

    The body is encoded once per change of the last results (and, with details, of the pool's
    counters) as a template; each millisecond, the current time and uptime are put into it, and
    every request within that millisecond gets the same response.
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._caches = {True: _HealthCache(), False: _HealthCache()}

    def answer_now(self, *, details: bool) -> Encoded:
        runtime = self.runtime
        probe, db = runtime.probe, runtime.db
        last: ProbeResult | None = None if probe is None else probe.last
        schema = None if last is None or runtime.schema is None else runtime.schema.last
        pool = db.pool_stats() if details and last is not None and db is not None else None
        key = (last, schema, pool)
        cache = self._caches[details]
        if cache.key != key:
            cache.template, cache.key, cache.ms = self.encode(last, schema, pool, details=details), key, -1
        ms = time.time_ns() // 1_000_000
        if cache.ms != ms:
            uptime = round(time.monotonic() - runtime.started_monotonic, 3)
            body = cache.template.replace(_NOW_JSON, _encoder.encode(utc_now())).replace(
                _UPTIME_JSON, _encoder.encode(uptime)
            )
            cache.response, cache.ms = health_response(body, db_ms=None if last is None else last.latency_ms), ms
        return cache.response

    def encode(
        self,
        last: ProbeResult | None,
        schema: SchemaStatus | None,
        pool: PoolStats | None,
        *,
        details: bool,
    ) -> bytes:
        """The body's template, with stand-ins for the current time and uptime."""
        settings = self.runtime.settings
        checks = {"uptime": [Check("system", "pass", _NOW, observedValue=_UPTIME, observedUnit="s")]}
        status = "pass"
        if last is not None:
            checks.update(database_checks(last, pool, details=details, schema=schema, now=_NOW))
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


class _Cache:
    """The last answer made for one key (compared by value; results compare by identity first)."""

    __slots__ = ("key", "response")

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.response = health_response(b"")


class DatabaseHealth(Guarded):
    """`/health/db`: a bounded, single-flight, cached database check. 503 on `fail`.

    `postgresql:migrations` is `warn` while the schema is not at the scripts' head. Between two
    measurements (`HEALTH_DB_CACHE_TTL`) the answer is reused unless details show the pool's counters.
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._caches = {True: _Cache(), False: _Cache()}

    def answer_now(self, *, details: bool) -> Encoded | None:
        runtime = self.runtime
        if runtime.probe is None or runtime.schema is None or runtime.phase is Phase.STARTING:
            return None
        result = runtime.probe.fresh()
        if result is None:
            return None
        schema = runtime.schema.last
        if result.status != "fail" and (schema is None or schema.status != "pass"):
            return None  # the schema check may read the database
        return self.encoded(result, schema, details=details)

    async def answer(self, *, details: bool, deadline: float) -> Encoded:
        phase = await self.runtime.wait_started(deadline)
        if self.runtime.probe is None or phase is Phase.STARTING or phase is Phase.FAILED:
            return failure(phase.reason or Phase.STARTING.reason, details=details)
        result = await self.check_database(deadline)
        return self.encoded(result, await self.schema_status(result, deadline), details=details)

    def encoded(self, result: ProbeResult, schema: SchemaStatus | None, *, details: bool) -> Encoded:
        pool: PoolStats | None = None
        key: tuple[Any, ...] = (result, schema)
        if details:
            assert self.runtime.db is not None, "made before the probe"
            pool = self.runtime.db.pool_stats()
            key = (result, schema, pool, time.time_ns() // 1_000_000)  # the pool's check carries a time
        cache = self._caches[details]
        if cache.key != key:
            body = self.body(result, schema, pool, details=details)
            status = 503 if body.status == "fail" else 200
            cache.response, cache.key = health_response(_encoder.encode(body), status, result.latency_ms), key
        return cache.response

    @staticmethod
    def body(result: ProbeResult, schema: SchemaStatus | None, pool: PoolStats | None, *, details: bool) -> HealthBody:
        checks = database_checks(result, pool, details=details, schema=schema)
        status = worst(*(entry.status for entries in checks.values() for entry in entries))
        body = HealthBody(status=status, serviceId=SERVICE_ID, checks=checks)
        output = result.output if result.output is not None else schema.output if schema is not None else None
        if details and output is not None:
            body.output = output
        return body


class Readiness(Guarded):
    """`/health/ready`: 200 only while started, not draining, the database answers, and its schema is at head."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._ready: tuple[float | None, Encoded] = (None, health_response(_PASS))

    def ready(self, db_ms: float | None) -> Encoded:
        """The 200 answer, made once per database latency."""
        if self._ready[0] != db_ms:
            self._ready = (db_ms, health_response(_PASS, 200, db_ms))
        return self._ready[1]

    def answer_now(self, *, details: bool) -> Encoded | None:
        runtime = self.runtime
        if runtime.phase is not Phase.SERVING or runtime.probe is None or runtime.schema is None:
            return None
        result = runtime.probe.fresh()
        schema = runtime.schema.last
        if result is None or result.status == "fail" or schema is None or schema.status != "pass":
            return None
        return self.ready(result.latency_ms)

    async def answer(self, *, details: bool, deadline: float) -> Encoded:
        phase = await self.runtime.wait_started(deadline)
        if phase is not Phase.SERVING:
            return failure(phase.reason, details=details)
        result = await self.check_database(deadline)
        if result.status == "fail":
            return failure(result.output or "The database check failed.", details=details, db_ms=result.latency_ms)
        schema = await self.schema_status(result, deadline)
        if schema is not None and schema.output is not None:
            return failure(schema.output, details=details, db_ms=result.latency_ms)
        return self.ready(result.latency_ms)
