"""The raw-ASGI baselines the load benchmark measures svc against, in the same run.

`uvicorn baseline:app --app-dir bench` serves, with no framework at all:

- `/health`: one hand-written ASGI callable sending a pre-encoded health+json body shaped like
  svc's production `/health` (the same size), and `/health/live`, `/health/ready`: `{"status":"pass"}`
  as svc answers them; all with the same response
  headers as svc's production responses: content type, cache control and length, and the ones svc's
  middleware adds (`X-Request-ID`, the security headers and HSTS, `Server-Timing`), as constants.
  This is the floor for a Python ASGI app on uvicorn that answers what svc answers: nothing is
  parsed, built or encoded per request. (uvicorn checks and writes every header in Python: the
  eight extra headers cost it ~6-10 µs of CPU per request on the machine in bench/README.md.)
- `/health-bare`: the same body with only the three headers of the body itself (content type, cache
  control, length): the floor for an app that sends no security headers, reported for comparison.
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
    b'"status":"pass","time":"2025-01-01T00:00:00.000Z"}],"postgresql:migrations":[{"componentType":"datastore",'
    b'"status":"pass","time":"2025-01-01T00:00:00.000Z"}]}}'
)
DB_BODY = b'{"status":"pass","serviceId":"svc"}'
LIVE_BODY = b'{"status":"pass"}'


#: What svc's middleware and health endpoints add to every production response (values are typical constants).
SVC_HEADERS = [
    (b"server-timing", b"app;dur=0.012"),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
]


def _start(
    status: int, body: bytes, content_type: bytes = b"application/health+json", *, bare: bool = False
) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode()),
            *([] if bare else SVC_HEADERS),
        ],
    }


HEALTH_START, HEALTH_BODY_MSG = _start(200, HEALTH_BODY), {"type": "http.response.body", "body": HEALTH_BODY}
BARE_START = _start(200, HEALTH_BODY, bare=True)
LIVE_START, LIVE_BODY_MSG = _start(200, LIVE_BODY), {"type": "http.response.body", "body": LIVE_BODY}
DB_START, DB_BODY_MSG = _start(200, DB_BODY), {"type": "http.response.body", "body": DB_BODY}
UNAVAILABLE_START, EMPTY_BODY_MSG = _start(503, b""), {"type": "http.response.body", "body": b""}
NOT_FOUND_START = _start(404, b"", b"text/plain", bare=True)
LIVE_PATHS = frozenset({"/health/live", "/health/ready"})

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
        if path == "/health":
            await send(HEALTH_START)
            await send(HEALTH_BODY_MSG)
        elif path in LIVE_PATHS:
            await send(LIVE_START)
            await send(LIVE_BODY_MSG)
        elif path == "/health-bare":
            await send(BARE_START)
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


async def send_with_headers(send: Any, response: Any, headers: list[tuple[bytes, bytes]]) -> None:
    """Send a Starlette response that has its body, `headers` first (as svc's edge does)."""
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": [*headers, *response.raw_headers]}
    )
    await send({"type": "http.response.body", "body": response.body})
