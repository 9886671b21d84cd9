"""The pool exhausted under concurrent load, on a real uvicorn: sessions fail fast with a 503, health still answers.

tests/test_db_faults.py covers one request against a full pool in process; this is the same contract
with many requests queueing at once, and probes arriving all along.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from svc.settings import Settings
from tests.conftest import UvicornProcess, cancelled, holding, wait_until

pytestmark = pytest.mark.e2e

POOL_TIMEOUT = 0.5
HEALTH_TIMEOUT = 0.8
MARGIN = 0.5  # an HTTP round trip on a busy two-core machine, on top of each bound
WAITERS = 30
HOLD = 2.0


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = await client.get(path)
    return response, time.perf_counter() - start


async def probe_until(client: httpx.AsyncClient, done: asyncio.Event) -> list[tuple[httpx.Response, float]]:
    """/health/db and /health/ready, over and over until `done`."""
    answers = []
    while not done.is_set():
        for path in ("/health/db", "/health/ready"):
            answers.append(await timed_get(client, path))
        await asyncio.sleep(0.05)
    return answers


async def test_sessions_get_a_503_problem_within_the_pool_timeout_while_health_answers_in_its_own(
    uvicorn: Callable[..., UvicornProcess],
) -> None:
    server = uvicorn(
        "--factory",
        app="tests.apps:create_test_app",
        DB_POOL_SIZE="2",
        DB_MAX_OVERFLOW="0",
        DB_POOL_TIMEOUT=str(POOL_TIMEOUT),
        HEALTH_DB_TIMEOUT=str(HEALTH_TIMEOUT),
        HEALTH_DB_CACHE_TTL="0",
        ACCESS_LOG="false",
    )
    server.wait_ready("/health/ready")  # the engine is made in the background after start-up
    limits = httpx.Limits(max_connections=WAITERS + 4)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, limits=limits) as client:
        holders = [asyncio.create_task(client.get("/hold", params={"seconds": HOLD})) for _ in range(2)]
        tasks: list[asyncio.Task[Any]] = [*holders]
        try:
            await wait_until(lambda: holding(client), 2)

            done = asyncio.Event()
            probes = asyncio.create_task(probe_until(client, done))
            queued = [asyncio.create_task(timed_get(client, "/hold")) for _ in range(WAITERS)]
            tasks += [probes, *queued]
            waiters = await asyncio.gather(*queued)
            done.set()
            health = await probes
            held = await asyncio.gather(*holders)
            after = await client.get("/hold")
        finally:
            await cancelled(tasks)

    for response, elapsed in waiters:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 503
        assert POOL_TIMEOUT <= elapsed < POOL_TIMEOUT + MARGIN, elapsed
    assert len(health) >= 2
    for response, elapsed in health:
        assert response.status_code == 200, response.text
        assert elapsed < HEALTH_TIMEOUT + MARGIN, elapsed
        if response.url.path == "/health/db":
            # The database answers; the full pool is a warning, not a failure.
            assert response.json()["status"] == "warn"
            assert response.json()["checks"]["postgresql:connections"][0]["status"] == "warn"
    assert [response.status_code for response in held] == [200, 200]
    assert after.status_code == 200
    assert "Traceback" not in server.output()


CONCURRENT = 64
BURSTS = 5
HOLD_EACH = 0.05  # long enough for all CONCURRENT requests to overlap, even on a busy machine


async def server_connections(pg: Any, application_name: str) -> set[tuple[int, Any]]:
    """The pool's PostgreSQL backends: (pid, backend_start), so a reopened connection never looks like the old one."""
    rows = await pg.fetch(
        "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return {(row["pid"], row["backend_start"]) for row in rows}


async def bursts(client: httpx.AsyncClient, count: int) -> None:
    """`count` times: CONCURRENT requests at once that each hold a connection briefly, all answered."""
    for _ in range(count):
        responses = await asyncio.gather(
            *(client.get("/hold", params={"seconds": HOLD_EACH}) for _ in range(CONCURRENT))
        )
        assert [r.status_code for r in responses] == [200] * CONCURRENT


@pytest.mark.parametrize(
    ("pool", "churns"),
    [({}, False), ({"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "10"}, True)],
    ids=["defaults", "overflow-control"],
)
async def test_the_default_pool_opens_no_server_connection_after_warm_up_under_64_concurrent_requests(
    uvicorn: Callable[..., UvicornProcess], pg: Any, pool: dict[str, str], churns: bool
) -> None:
    name = f"svc-churn-{uuid.uuid4().hex[:8]}"
    server = uvicorn(
        "--factory", app="tests.apps:create_test_app", DB_APPLICATION_NAME=name, ACCESS_LOG="false", **pool
    )
    server.wait_ready("/health/ready")
    limits = httpx.Limits(max_connections=CONCURRENT)
    # A connection per request: what is counted is PostgreSQL's connections, and an HTTP keep-alive connection
    # that uvicorn closes while a stalled machine leaves it idle must not fail the test.
    close = {"Connection": "close"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits, headers=close) as client:
        await bursts(client, 2)  # warm-up: the pool opens what it keeps
        warm = await server_connections(pg, name)
        await bursts(client, BURSTS)
        after = await server_connections(pg, name)
    if churns:  # the control: overflow connections are closed on return and opened again by the next burst
        assert after - warm
    else:
        assert after == warm
        assert len(warm) <= Settings().db_pool_size
