"""Health endpoints (IETF draft-inadarei-api-health-check-06) as plain ASGI callables.

They skip Starlette's Request/Response machinery: probes call them constantly, so what never
changes is encoded once and the rest is a single msgspec encode.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from svc.auth import Access, details_access
from svc.db import PoolStats
from svc.errors import PROBLEM_TYPE, encode_problem
from svc.migrations import SchemaStatus
from svc.probe import ProbeResult, utc_now

__all__ = ["DatabaseHealth", "Health", "Liveness", "Readiness"]

SERVICE_ID = "svc"
DESCRIPTION = "svc: Starlette service foundation on PostgreSQL"
HEALTH_TYPE = b"application/health+json"
POOL_WARN_USAGE = 0.8
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


async def respond(scope: Scope, send: Send, status: int, body: bytes) -> None:
    """Send a health response; HEAD gets the same headers and no body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", HEALTH_TYPE),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class Endpoint:
    """Base of the health endpoints: reads settings and runtime objects from `app.state`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        access = details_access(state.settings, scope)
        if access is Access.DENIED:
            body = encode_problem(
                401, "Unauthorized", "The bearer token is not valid for this endpoint.", scope["path"]
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", PROBLEM_TYPE.encode()),
                        (b"www-authenticate", b'Bearer realm="health"'),
                        (b"cache-control", b"no-store"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await self.respond(scope, send, state, details=access is Access.SHOWN)

    async def respond(self, scope: Scope, send: Send, state: Any, *, details: bool) -> None:
        raise NotImplementedError


class Liveness:
    """`/health/live`: the process answers. No I/O, ever."""

    BODY = _encoder.encode(HealthBody(status="pass"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(scope, send, 200, self.BODY)


def migrations_check(schema: SchemaStatus, *, details: bool) -> Check:
    check = Check("datastore", schema.status, schema.time)
    if details:
        check.observedValue = schema.observed()
        if schema.output is not None:
            check.output = schema.output
    return check


def database_checks(
    result: ProbeResult, pool: PoolStats, *, details: bool, schema: SchemaStatus | None = None
) -> dict[str, list[Check]]:
    pool_status = "warn" if pool.usage > POOL_WARN_USAGE else "pass"
    latency = Check("datastore", result.status, result.time)
    if not details:
        checks = {"postgresql:responseTime": [latency]}
        if schema is not None:
            checks["postgresql:migrations"] = [migrations_check(schema, details=False)]
        return checks
    if result.latency_ms is not None:
        latency.observedValue, latency.observedUnit = result.latency_ms, "ms"
    if result.output is not None:
        latency.output = result.output
    connections = Check(
        "datastore",
        pool_status,
        utc_now(),
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


async def schema_status(state: Any, result: ProbeResult) -> SchemaStatus | None:
    """The schema check: from memory once at head, or while the database check fails; else (re-)read."""
    last: SchemaStatus | None = state.schema.last
    if (last is not None and last.status == "pass") or result.status == "fail":
        return last
    status: SchemaStatus = await state.schema.check()
    return status


class Health(Endpoint):
    """`/health`: service identity, uptime, and the last database and schema results (from cache, no query)."""

    async def respond(self, scope: Scope, send: Send, state: Any, *, details: bool) -> None:
        settings = state.settings
        uptime = round(time.monotonic() - state.started_monotonic, 3)
        checks = {"uptime": [Check("system", "pass", utc_now(), observedValue=uptime, observedUnit="s")]}
        status = "pass"
        probe = getattr(state, "probe", None)
        if probe is not None and probe.last is not None:
            schema: SchemaStatus | None = state.schema.last
            checks.update(database_checks(probe.last, state.db.pool_stats(), details=details, schema=schema))
            ok = probe.last.status == "pass" and (schema is None or schema.status == "pass")
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
        await respond(scope, send, 200, _encoder.encode(body))


class DatabaseHealth(Endpoint):
    """`/health/db`: a bounded, single-flight, cached database check. 503 on `fail`.

    `postgresql:migrations` is `warn` while the schema is not at the scripts' head.
    """

    async def respond(self, scope: Scope, send: Send, state: Any, *, details: bool) -> None:
        if state.phase == "starting":
            body = HealthBody(status="fail", output="Starting up.") if details else HealthBody(status="fail")
            await respond(scope, send, 503, _encoder.encode(body))
            return
        result = await state.probe.check()
        schema = await schema_status(state, result)
        pool = state.db.pool_stats()
        checks = database_checks(result, pool, details=details, schema=schema)
        status = worst(*(entry.status for entries in checks.values() for entry in entries))
        body = HealthBody(status=status, serviceId=SERVICE_ID, checks=checks)
        output = result.output if result.output is not None else schema.output if schema is not None else None
        if details and output is not None:
            body.output = output
        await respond(scope, send, 503 if status == "fail" else 200, _encoder.encode(body))


class Readiness(Endpoint):
    """`/health/ready`: 200 only while started, not draining, the database answers, and its schema is at head."""

    async def respond(self, scope: Scope, send: Send, state: Any, *, details: bool) -> None:
        phase = state.phase
        output: str | None
        if phase != "serving":
            output = "Shutting down." if phase == "draining" else "Starting up."
        else:
            result = await state.probe.check()
            output = result.output if result.status == "fail" else None
            if output is None and (schema := await schema_status(state, result)) is not None:
                output = schema.output
        if output is None:
            await respond(scope, send, 200, _READY)
            return
        body = HealthBody(status="fail", output=output) if details else HealthBody(status="fail")
        await respond(scope, send, 503, _encoder.encode(body))


_READY = _encoder.encode(HealthBody(status="pass"))
