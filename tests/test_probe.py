"""The database probe: one query for many concurrent checks, the cache TTL, and its bounds, counted on the server.

Queries are counted in `pg_stat_database.xact_commit` of a scratch database only the probe uses. A
backend publishes its counts when it goes idle at most once a second (and may hold them up to ten),
but always when it exits: so each measurement closes the probe's connection, waits until the
backend is gone and the count settles, and subtracts what opening and closing one connection
costs (measured, not assumed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from svc.app import create_app
from svc.postgres import Purpose, connector
from svc.probe import DatabaseProbe, ProbeResult, describe_failure
from svc.settings import Settings
from tests.conftest import asyncpg_dsn, serve

CONCURRENT = 50


class ServerCount:
    """Transactions committed in one database, as the server counts them."""

    def __init__(self, pg: Any, url: str) -> None:
        self.pg = pg
        self.url = url
        self.database = make_url(url).database

    async def read(self) -> int:
        await self.pg.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await self.pg.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self.database
        )
        return value

    async def settled(self, quiet: float = 0.1, limit: float = 15.0) -> int:
        """The count once no backend is connected to the database and it has not changed for `quiet` seconds.

        A backend publishes its counts before it leaves pg_stat_activity (before_shmem_exit runs first).
        """
        deadline = time.monotonic() + limit
        while await self.pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.database):
            assert time.monotonic() < deadline, "a backend stayed connected"
            await asyncio.sleep(0.01)
        value, since = await self.read(), time.monotonic()
        while time.monotonic() - since < quiet:
            assert time.monotonic() < deadline, "the transaction count never settled"
            await asyncio.sleep(0.02)
            if (now := await self.read()) != value:
                value, since = now, time.monotonic()
        return value

    async def during(self, action: Callable[[], Awaitable[object]]) -> int:
        """How many transactions `action` (which must close its connections) caused on the server."""
        before = await self.settled()
        await action()
        return await self.settled() - before

    async def connection_cost(self) -> int:
        """Transactions that opening and closing one connection costs (the server's start-up work).

        The least of three tries: other work on the server (autovacuum, a backend of an earlier test
        publishing late) can only add to a count, and once made one try cost 5 where a burst cost 2.
        """

        async def open_and_close() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(self.url))
            await conn.close()

        return min([await self.during(open_and_close) for _ in range(3)])


def make_probe(url: str, settings: Settings, **overrides: Any) -> DatabaseProbe:
    """A probe connecting as the app's does (same connect arguments)."""
    connect = connector(url, settings, Purpose.HEALTH)
    options: dict[str, Any] = {"timeout": 2.0, "warn_ms": 1000.0, "ttl": 0.0, **overrides}
    return DatabaseProbe(connect, **options)


@pytest.fixture
async def count(pg: Any, scratch_database: str) -> ServerCount:
    return ServerCount(pg, scratch_database)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_concurrent_checks_cause_exactly_one_query_on_the_server(
    count: ServerCount, make_db_settings: Callable[..., Settings], warm: bool
) -> None:
    # TTL 0: nothing is cached, so only single-flight can explain one query.
    probe = make_probe(count.url, make_db_settings())
    results: list[ProbeResult] = []

    async def burst() -> None:
        if warm:
            assert (await probe.check()).status == "pass"
        results.extend(await asyncio.gather(*(probe.check() for _ in range(CONCURRENT))))
        await probe.close()

    transactions = await count.during(burst)
    assert transactions == await count.connection_cost() + (2 if warm else 1)
    assert len(results) == CONCURRENT
    assert all(result is results[0] for result in results)
    assert results[0].status == "pass"


# (cache TTL, seconds to wait before each check, queries expected)
TTL_CASES = [
    pytest.param(0.0, [0, 0, 0, 0, 0], 5, id="ttl0-every-check-queries"),
    pytest.param(30.0, [0, 0, 0, 0, 0], 1, id="within-ttl-no-new-query"),
    pytest.param(0.3, [0, 0, 0.4, 0, 0.4], 3, id="after-ttl-one-new-query"),
]


@pytest.mark.parametrize(("ttl", "waits", "queries"), TTL_CASES)
async def test_cache_ttl_decides_when_a_check_queries_again(
    count: ServerCount, make_db_settings: Callable[..., Settings], ttl: float, waits: list[float], queries: int
) -> None:
    probe = make_probe(count.url, make_db_settings(), ttl=ttl)
    results: list[ProbeResult] = []

    async def checks() -> None:
        for wait in waits:
            await asyncio.sleep(wait)
            results.append(await probe.check())
        await probe.close()

    assert await count.during(checks) == await count.connection_cost() + queries
    assert len({id(result) for result in results}) == queries
    assert len({result.measured_at for result in results}) == queries
    assert all(result.status == "pass" for result in results)


async def test_health_summary_adds_no_query(count: ServerCount, make_db_settings: Callable[..., Settings]) -> None:
    app = create_app(make_db_settings(database_url=count.url, health_db_cache_ttl=0.0))
    async with serve(app) as client:
        assert (await client.get("/health/db")).json()["checks"]["postgresql:responseTime"][0]["status"] == "pass"
        await app.runtime.probe.close()  # publishes the probe's counts; the last result stays

        async def summaries() -> None:
            for _ in range(20):
                body = (await client.get("/health")).json()
                assert body["checks"]["postgresql:responseTime"][0]["status"] == "pass"
            await app.runtime.probe.close()

        assert await count.during(summaries) == 0


async def test_concurrent_requests_share_one_measurement(make_db_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_db_settings(health_db_cache_ttl=0.0))) as client:
        responses = await asyncio.gather(*(client.get("/health/db") for _ in range(CONCURRENT)))
        assert {r.status_code for r in responses} == {200}
        latencies = [r.json()["checks"]["postgresql:responseTime"] for r in responses]
        assert all(latency == latencies[0] for latency in latencies)
        again = (await client.get("/health/db")).json()["checks"]["postgresql:responseTime"]
        assert again[0]["time"] >= latencies[0][0]["time"]
        assert again != latencies[0]


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_check(
    database_url: str, make_db_settings: Callable[..., Settings]
) -> None:
    probe = make_probe(database_url, make_db_settings())
    try:
        leaving = asyncio.ensure_future(probe.check())
        staying = asyncio.ensure_future(probe.check())
        await asyncio.sleep(0)  # both wait on the one check now
        leaving.cancel()
        result = await staying
        assert result.status == "pass"
        assert probe.last is result
        with pytest.raises(asyncio.CancelledError):
            await leaving
    finally:
        await probe.close()


async def test_probe_reconnects_within_one_check_after_its_connection_is_killed(
    database_url: str, make_db_settings: Callable[..., Settings], pg: Any
) -> None:
    probe = make_probe(database_url, make_db_settings(), timeout=1.0)
    try:
        first = await probe.check()
        assert first.status == "pass"
        pid = probe._conn.get_server_pid()
        assert await pg.fetchval("SELECT pg_terminate_backend($1)", pid)
        start = time.perf_counter()
        second = await probe.check()
        assert second.status == "pass", second.output
        assert time.perf_counter() - start < 1.0
        assert probe._conn.get_server_pid() != pid
    finally:
        await probe.close()


async def test_probe_times_out_on_a_silent_server_and_shuts_down_cleanly_mid_check(
    silent_port: int, make_db_settings: Callable[..., Settings]
) -> None:
    url = f"postgresql+asyncpg://svc:pw@127.0.0.1:{silent_port}/db"
    probe = make_probe(url, make_db_settings(), timeout=0.2)
    start = time.perf_counter()
    result = await probe.check()
    assert time.perf_counter() - start < 0.3
    assert result.status == "fail"
    assert result.output == "PostgreSQL did not answer within 0.2 s."
    assert result.latency_ms is None
    # Shutdown with a check in flight: the waiting caller is cancelled, nothing is left running.
    waiting = asyncio.ensure_future(probe.check())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await probe.close()
    assert time.perf_counter() - start < 0.1
    assert [t for t in asyncio.all_tasks() if t not in {asyncio.current_task(), waiting}] == []
    with pytest.raises(asyncio.CancelledError):
        await waiting


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (TimeoutError(), "did not answer within 0.8 s"),
        (ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 5432)"), "refused the connection"),
        (OSError("Multiple exceptions: [Errno 111] db.internal:5432"), "connection to PostgreSQL failed"),
        (asyncpg.InvalidPasswordError('password authentication failed for user "svc_user"'), "credentials"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "starting up or shutting down"),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), "no free connection slots"),
        (asyncpg.InterfaceError("connection is closed"), "connection to PostgreSQL failed"),
        (asyncpg.InternalClientError("cannot switch to state 15"), "connection to PostgreSQL failed"),
        (RuntimeError("postgresql://svc_user:pw@db.internal/app"), "unexpectedly (RuntimeError)"),
    ],
)
def test_failure_output_is_plain_words_without_connection_details(exc: BaseException, words: str) -> None:
    output = describe_failure(exc, 0.8)
    assert words in output
    for detail in ("svc_user", "10.1.2.3", "db.internal", "5432", "pw@"):
        assert detail not in output


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
async def test_probe_does_not_swallow_exits(exc: BaseException) -> None:
    async def connect(budget: float) -> asyncpg.Connection:
        raise exc

    probe = DatabaseProbe(connect, timeout=1.0, warn_ms=100.0, ttl=0.0)
    with pytest.raises(type(exc)):
        await probe._measure()
    assert probe.last is None


async def test_latency_is_the_querys_not_the_connects(
    database_url: str, make_db_settings: Callable[..., Settings]
) -> None:
    """A slow connect (the first after start-up, on a loaded machine) must not make the check a `warn`."""
    connect = connector(database_url, make_db_settings(), Purpose.HEALTH)

    async def slow_connect(budget: float) -> asyncpg.Connection:
        await asyncio.sleep(0.3)
        return await connect(budget)

    probe = DatabaseProbe(slow_connect, timeout=2.0, warn_ms=100.0, ttl=0.0)
    try:
        start = time.perf_counter()
        result = await probe.check()
        assert time.perf_counter() - start >= 0.3
        assert result.status == "pass", result.output
        assert result.latency_ms is not None
        assert result.latency_ms < 100
    finally:
        await probe.close()


async def test_a_check_during_connect_ahead_uses_that_connection(
    database_url: str, make_db_settings: Callable[..., Settings]
) -> None:
    connect = connector(database_url, make_db_settings(), Purpose.HEALTH)
    connects = 0

    async def counting_connect(budget: float) -> asyncpg.Connection:
        nonlocal connects
        connects += 1
        await asyncio.sleep(0.05)
        return await connect(budget)

    probe = DatabaseProbe(counting_connect, timeout=2.0, warn_ms=1000.0, ttl=0.0)
    try:
        probe.open_soon()
        results = await asyncio.gather(probe.check(), probe.connect())
        assert results[0].status == "pass"
        assert results[1] is True
        assert connects == 1
    finally:
        await probe.close()


async def test_close_stops_a_connect_ahead_on_a_silent_server(
    silent_port: int, make_db_settings: Callable[..., Settings]
) -> None:
    probe = make_probe(f"postgresql+asyncpg://svc:pw@127.0.0.1:{silent_port}/db", make_db_settings(), timeout=5.0)
    probe.open_soon()
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await probe.close()
    assert time.perf_counter() - start < 0.5
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
