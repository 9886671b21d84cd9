"""Soak: sustained load on every health endpoint of a real uvicorn while its database goes away and comes back.

Short by default (so .ci/run can afford it); SOAK_SECONDS=300 scripts/test -m slow runs it longer by hand.
The database is a private embedded PostgreSQL 18, stopped and started by the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import PrivatePostgres, UvicornProcess, asyncpg_dsn

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SECONDS = float(os.environ.get("SOAK_SECONDS", "12"))
CONCURRENCY = 8
PATHS = ("/health", "/health/live", "/health/ready", "/health/db")
DB_PATHS = ("/health/ready", "/health/db")
HEALTH_TIMEOUT = 0.5
CACHE_TTL = 0.2
POOL_SIZE, MAX_OVERFLOW = 2, 1
PROBE_CONNECTIONS = 2  # the probe's and the schema check's own
# Slower than this is a hang: the bound, plus what a two-core machine shared with other work adds to a round trip.
SLOW = HEALTH_TIMEOUT + 2.5
RECOVERY = 2.0


@dataclass(frozen=True, slots=True)
class Sample:
    path: str
    started: float
    finished: float
    status: int | None  # None: no HTTP answer at all
    health: str | None  # the body's "status"


async def load(base_url: str, stop: asyncio.Event, samples: list[Sample]) -> None:
    """`CONCURRENCY` clients, each on its own keep-alive connection, requesting the health paths in turn as fast
    as answers come (one client per connection: a shared pool's hand-over would add its own waits to the timings)."""

    async def client_loop(offset: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base_url, timeout=SLOW * 4, limits=limits) as client:
            n = offset
            while not stop.is_set():
                path = PATHS[n % len(PATHS)]
                n += 1
                started = time.monotonic()
                try:
                    response = await client.get(path)
                    status, health = response.status_code, response.json().get("status")
                except httpx.HTTPError:
                    status, health = None, None
                samples.append(Sample(path, started, time.monotonic(), status, health))

    await asyncio.gather(*(client_loop(i) for i in range(CONCURRENCY)))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def open_connections(url: str, name: str) -> int:
    """The app's connections on the server (pool and probe), as PostgreSQL counts them."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ($1, $1 || ':health')", name
        )
        return count
    finally:
        await conn.close()


async def test_health_under_sustained_load_through_a_database_outage(
    uvicorn: Callable[..., UvicornProcess], private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # a line per request would be most of the work
    name = f"svc-soak-{uuid.uuid4().hex[:8]}"
    server = uvicorn(
        DATABASE_URL=private_postgres.url,
        DB_APPLICATION_NAME=name,
        DB_POOL_SIZE=str(POOL_SIZE),
        DB_MAX_OVERFLOW=str(MAX_OVERFLOW),
        HEALTH_DB_TIMEOUT=str(HEALTH_TIMEOUT),
        HEALTH_DB_CACHE_TTL=str(CACHE_TTL),
        ACCESS_LOG="false",
    )
    server.wait_ready("/health/ready")
    samples: list[Sample] = []
    stop = asyncio.Event()
    load_task = asyncio.create_task(load(server.base_url, stop, samples))
    connections = []

    await asyncio.sleep(SECONDS * 0.15)  # warm-up
    warm = time.monotonic()
    rss_warm = rss_kib(server.proc.pid)
    await asyncio.sleep(SECONDS * 0.35)
    connections.append(await open_connections(private_postgres.url, name))
    stopping = time.monotonic()
    await asyncio.to_thread(private_postgres.stop)
    down = time.monotonic()
    await asyncio.sleep(SECONDS * 0.2)
    restarting = time.monotonic()
    await asyncio.to_thread(private_postgres.start)
    up = time.monotonic()
    await asyncio.sleep(SECONDS * 0.15)
    connections.append(await open_connections(private_postgres.url, name))
    await asyncio.sleep(SECONDS * 0.15)
    stop.set()
    await load_task
    rss_end = rss_kib(server.proc.pid)
    connections.append(await open_connections(private_postgres.url, name))

    assert len(samples) > 100 * SECONDS * 0.5, len(samples)
    # Never a hang, a dropped connection or a 500: every request answered, within its bound.
    assert all(s.status in (200, 503) for s in samples), {s.status for s in samples}
    slowest = max((s for s in samples if s.started > warm), key=lambda s: s.finished - s.started)
    assert slowest.finished - slowest.started < SLOW, (slowest, stopping, down, restarting, up)

    healthy = [s for s in samples if s.finished < stopping]
    assert all(s.status == 200 for s in healthy), [s for s in healthy if s.status != 200][:5]

    # Down (once the last cached result has expired): the database's endpoints fail, the others answer.
    outage = [s for s in samples if down + CACHE_TTL + HEALTH_TIMEOUT < s.started and s.finished < restarting]
    assert {s.path for s in outage} == set(PATHS)
    for s in outage:
        expected = (503, "fail") if s.path in DB_PATHS else (200, "warn" if s.path == "/health" else "pass")
        assert (s.status, s.health) == expected, s

    # Back: every database endpoint passes again within RECOVERY of the server's return, and stays so.
    for path in DB_PATHS:
        after = [s for s in samples if s.path == path and s.started > up]
        first_ok = next(s for s in after if s.status == 200)
        assert first_ok.finished - up < RECOVERY, first_ok.finished - up
        assert all(s.status == 200 for s in after if s.started > first_ok.finished)

    assert max(connections) <= POOL_SIZE + MAX_OVERFLOW + PROBE_CONNECTIONS, connections
    assert rss_end < rss_warm * 1.05, (rss_warm, rss_end)
