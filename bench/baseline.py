"""The raw-ASGI baselines the load benchmark measures svc against, in the same run.

`uvicorn baseline:app --app-dir bench` serves, with no framework at all:

- `/health`, `/health/live`, `/health/ready`: one hand-written ASGI callable sending a pre-encoded
  health+json body shaped like svc's production `/health` (same headers, similar size). This is the
  floor for a Python ASGI app on uvicorn: nothing is parsed, built or encoded per request.
- `/health/db`: `SELECT 1` per request through an asyncpg pool (`pool.fetchval`), the way a raw
  asyncpg app is usually written. asyncpg's pool resets each connection on release (a second round
  trip), so this is also shown as
- `/health/db-1rt`: the same with the pool's reset turned off: exactly one round trip per request.

Configuration (environment): BASELINE_DATABASE_URL (a postgresql:// DSN; without it the /health/db
paths answer 503), BASELINE_POOL_SIZE (default 5, svc's DB_POOL_SIZE default).
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

HEALTH_BODY = (
    b'{"status":"pass","version":"0","releaseId":"0.1.0","serviceId":"svc",'
    b'"description":"svc: Starlette service foundation on PostgreSQL","environment":"production",'
    b'"checks":{"uptime":[{"componentType":"system","status":"pass","time":"2025-01-01T00:00:00.000Z",'
    b'"observedValue":12.345,"observedUnit":"s"}],"postgresql:responseTime":[{"componentType":"datastore",'
    b'"status":"pass","time":"2025-01-01T00:00:00.000Z"}]}}'
)
DB_BODY = b'{"status":"pass","serviceId":"svc"}'


def _start(status: int, body: bytes, content_type: bytes = b"application/health+json") -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode()),
        ],
    }


HEALTH_START, HEALTH_BODY_MSG = _start(200, HEALTH_BODY), {"type": "http.response.body", "body": HEALTH_BODY}
DB_START, DB_BODY_MSG = _start(200, DB_BODY), {"type": "http.response.body", "body": DB_BODY}
UNAVAILABLE_START, EMPTY_BODY_MSG = _start(503, b""), {"type": "http.response.body", "body": b""}
NOT_FOUND_START = _start(404, b"", b"text/plain")
HEALTH_PATHS = frozenset({"/health", "/health/live", "/health/ready"})

_pools: dict[str, Any] = {}


async def _noop_reset(conn: Any) -> None:
    """No session state is ever changed here, so nothing needs resetting."""


async def _startup() -> None:
    dsn = os.environ.get("BASELINE_DATABASE_URL")
    if not dsn:
        return
    size = int(os.environ.get("BASELINE_POOL_SIZE", "5"))
    _pools["/health/db"] = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
    _pools["/health/db-1rt"] = await asyncpg.create_pool(dsn, min_size=size, max_size=size, reset=_noop_reset)


async def _shutdown() -> None:
    while _pools:
        _, pool = _pools.popitem()
        await pool.close()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        path = scope["path"]
        if path in HEALTH_PATHS:
            await send(HEALTH_START)
            await send(HEALTH_BODY_MSG)
        elif (pool := _pools.get(path)) is not None:
            await pool.fetchval("SELECT 1")
            await send(DB_START)
            await send(DB_BODY_MSG)
        elif path in ("/health/db", "/health/db-1rt"):
            await send(UNAVAILABLE_START)
            await send(EMPTY_BODY_MSG)
        else:
            await send(NOT_FOUND_START)
            await send(EMPTY_BODY_MSG)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await _startup()
                except (OSError, asyncpg.PostgresError) as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
