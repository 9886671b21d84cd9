"""Contract of /health/db, /health/ready and the database summary in /health, on a real PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from svc.app import create_app
from svc.db import Database
from svc.settings import Settings
from tests.conftest import serve
from tests.test_health import parse_time

TOKEN = "health-token-0123456789abcdef"
DETAIL_KEYS = {"postgresql:responseTime", "postgresql:connections", "postgresql:version"}


def ms_floor(moment: datetime) -> datetime:
    """`moment` truncated to the millisecond, as the health `time` fields are."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@contextlib.asynccontextmanager
async def held_connections(db: Database, count: int) -> AsyncIterator[None]:
    """`count` pool connections checked out (each in an open session) until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            session = await stack.enter_async_context(db.session())
            await session.execute(text("SELECT 1"))
        yield


def pool_counters(app: Starlette) -> dict[str, int]:
    """The pool's own counters, read straight from SQLAlchemy's pool."""
    pool: Any = app.runtime.db.engine.pool
    return {
        "size": pool.size(),
        "checkedIn": pool.checkedin(),
        "checkedOut": pool.checkedout(),
        "overflow": max(0, pool.overflow()),
        "maxOverflow": app.runtime.settings.db_max_overflow,
    }


async def test_db_health_passes_with_latency_pool_counters_and_server_version(
    make_db_settings: Callable[..., Settings], pg: Any
) -> None:
    app = create_app(make_db_settings())
    async with serve(app) as client:
        before = ms_floor(datetime.now(UTC))
        response = await client.get("/health/db")
        after = datetime.now(UTC)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/health+json"
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["status"] == "pass"
        assert "output" not in body
        checks = body["checks"]
        assert checks.keys() >= DETAIL_KEYS

        [latency] = checks["postgresql:responseTime"]
        assert latency["componentType"] == "datastore"
        assert latency["status"] == "pass"
        assert latency["observedUnit"] == "ms"
        assert isinstance(latency["observedValue"], float | int)
        assert 0 < latency["observedValue"] < app.runtime.settings.health_db_timeout * 1000
        assert before <= parse_time(latency["time"]) <= after

        [connections] = checks["postgresql:connections"]
        assert connections["componentType"] == "datastore"
        assert connections["status"] == "pass"
        assert before <= parse_time(connections["time"]) <= after
        assert connections["observedValue"] == pool_counters(app)
        assert connections["observedValue"]["size"] == app.runtime.settings.db_pool_size
        assert connections["observedValue"]["maxOverflow"] == app.runtime.settings.db_max_overflow

        [version] = checks["postgresql:version"]
        assert version["status"] == "pass"
        assert version["observedValue"] == (await pg.fetchval("SHOW server_version")).split(" ")[0]
        assert int(version["observedValue"].split(".")[0]) == int(await pg.fetchval("SHOW server_version_num")) // 10000


@pytest.mark.parametrize(("held", "expected"), [(0, (0, 0)), (3, (3, 0)), (7, (7, 2))])
async def test_db_health_connections_are_the_pools_own_counters(
    make_db_settings: Callable[..., Settings], held: int, expected: tuple[int, int]
) -> None:
    app = create_app(make_db_settings(db_pool_size=5, db_max_overflow=10))
    async with serve(app) as client, held_connections(app.runtime.db, held):
        [connections] = (await client.get("/health/db")).json()["checks"]["postgresql:connections"]
        observed = connections["observedValue"]
        assert observed == pool_counters(app)
        assert (observed["checkedOut"], observed["overflow"]) == expected
        assert observed["size"] == 5
        assert observed["maxOverflow"] == 10
        # 7 of 15 is below 80%.
        assert connections["status"] == "pass"


@pytest.mark.parametrize(("held", "status"), [(4, "pass"), (5, "warn")])
async def test_db_health_warns_only_when_pool_use_exceeds_80_percent(
    make_db_settings: Callable[..., Settings], held: int, status: str
) -> None:
    app = create_app(make_db_settings(db_pool_size=5, db_max_overflow=0))
    async with serve(app) as client, held_connections(app.runtime.db, held):
        response = await client.get("/health/db")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == status
        [connections] = body["checks"]["postgresql:connections"]
        assert connections["status"] == status
        assert connections["observedValue"]["checkedOut"] == held
        assert body["checks"]["postgresql:responseTime"][0]["status"] == "pass"
        if status == "warn":
            assert "80%" in connections["output"]
        else:
            assert "output" not in connections


async def test_db_health_warns_when_latency_exceeds_warn_ms(make_db_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_db_settings(health_db_warn_ms=0.001))) as client:
        response = await client.get("/health/db")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "warn"
        [latency] = body["checks"]["postgresql:responseTime"]
        assert latency["status"] == "warn"
        assert latency["observedValue"] > 0.001
        assert "exceeds 0.001 ms" in latency["output"]
        assert body["output"] == latency["output"]
        assert body["checks"]["postgresql:connections"][0]["status"] == "pass"
        # Liveness never depends on the database, and a slow database is still ready.
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200


class DetailsCase(NamedTuple):
    mode: str  # HEALTH_SHOW_DETAILS
    token: str | None  # HEALTH_TOKEN
    authorization: str | None  # the request's Authorization header
    code: int  # expected HTTP status
    details: bool  # whether details are shown


DETAILS_CASES = {
    "always-anonymous": DetailsCase("always", None, None, 200, True),
    "always-ignores-tokens": DetailsCase("always", TOKEN, "Bearer not-the-token", 200, True),
    "authorized-anonymous": DetailsCase("when_authorized", TOKEN, None, 200, False),
    "authorized-right-token": DetailsCase("when_authorized", TOKEN, f"Bearer {TOKEN}", 200, True),
    "authorized-wrong-token": DetailsCase("when_authorized", TOKEN, "Bearer not-the-token", 401, False),
    "authorized-scheme-any-case": DetailsCase("when_authorized", TOKEN, f"bEARER {TOKEN}", 200, True),
    "authorized-other-scheme": DetailsCase("when_authorized", TOKEN, f"Basic {TOKEN}", 401, False),
    "authorized-token-prefix": DetailsCase("when_authorized", TOKEN, f"Bearer {TOKEN}x", 401, False),
    "authorized-no-token-configured": DetailsCase("when_authorized", None, f"Bearer {TOKEN}", 401, False),
    "never": DetailsCase("never", TOKEN, f"Bearer {TOKEN}", 200, False),
}


@pytest.mark.parametrize("case", DETAILS_CASES.values(), ids=DETAILS_CASES.keys())
async def test_db_health_details_are_gated_by_show_details_and_bearer_token(
    make_db_settings: Callable[..., Settings], case: DetailsCase
) -> None:
    mode, token, authorization, code, details = case
    headers = {"Authorization": authorization} if authorization else {}
    async with serve(create_app(make_db_settings(health_show_details=mode, health_token=token))) as client:
        response = await client.get("/health/db", headers=headers)
        assert response.status_code == code
        assert response.headers["cache-control"] == "no-store"
        if code == 401:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith("Bearer")
            problem = response.json()
            assert problem["status"] == 401
            assert problem["instance"] == "/health/db"
            assert TOKEN not in response.text
            return
        body = response.json()
        assert body["status"] == "pass"
        checks = body["checks"]
        if details:
            assert checks.keys() >= DETAIL_KEYS
            assert checks["postgresql:responseTime"][0]["observedUnit"] == "ms"
        else:
            assert not DETAIL_KEYS & checks.keys() - {"postgresql:responseTime"}
            [latency] = checks["postgresql:responseTime"]
            assert latency["status"] == "pass"
            assert not {"observedValue", "observedUnit", "output"} & latency.keys()
            assert "version" not in response.text
            assert "checkedOut" not in response.text


@pytest.mark.parametrize("path", ["/health", "/health/db"])
async def test_without_details_a_warning_is_still_reported_exactly(
    make_db_settings: Callable[..., Settings], path: str
) -> None:
    settings = make_db_settings(health_show_details="when_authorized", health_token=TOKEN, health_db_warn_ms=0.001)
    async with serve(create_app(settings)) as client:
        await client.get("/health/db")  # /health reports the last check; make one
        anonymous = await client.get(path)
        authorized = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert anonymous.status_code == authorized.status_code == 200
        assert anonymous.json()["status"] == authorized.json()["status"] == "warn"
        assert "exceeds" not in anonymous.text
        assert "exceeds" in authorized.text


async def test_readiness_is_503_before_lifespan_start_up(make_db_settings: Callable[..., Settings]) -> None:
    app = create_app(make_db_settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/health+json"
        assert ready.json() == {"status": "fail", "output": "Starting up."}
        assert (await client.get("/health/live")).status_code == 200


async def test_readiness_is_200_while_serving_and_503_once_shutdown_has_begun(
    make_db_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_db_settings())
    async with serve(app) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "pass"}
        assert (await client.head("/health/ready")).status_code == 200
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        draining = await client.get("/health/ready")
        assert draining.status_code == 503
        assert draining.json() == {"status": "fail", "output": "Shutting down."}
        assert (await client.head("/health/ready")).status_code == 503
        assert (await client.get("/health/live")).status_code == 200


@pytest.mark.parametrize(("mode", "has_output"), [("always", True), ("never", False)])
async def test_readiness_says_why_only_with_details(
    make_db_settings: Callable[..., Settings], mode: str, has_output: bool
) -> None:
    app = create_app(make_db_settings(health_show_details=mode))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "fail"
    assert ("output" in ready.json()) is has_output


async def test_health_has_no_database_summary_before_the_first_check(make_db_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_db_settings())) as client:
        body = (await client.get("/health")).json()
        assert body["status"] == "pass"
        assert not any(name.startswith("postgresql:") for name in body["checks"])


async def test_health_summarises_the_last_database_check_from_the_cache(
    make_db_settings: Callable[..., Settings],
) -> None:
    # TTL 0: were /health to check the database, every call would make a new measurement.
    app = create_app(make_db_settings(health_db_cache_ttl=0.0))
    async with serve(app) as client:
        db = (await client.get("/health/db")).json()["checks"]
        for _ in range(3):
            health = await client.get("/health")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "pass", health.text
            assert body["checks"]["uptime"][0]["status"] == "pass"
            assert body["checks"]["postgresql:responseTime"] == db["postgresql:responseTime"]
            assert body["checks"]["postgresql:version"] == db["postgresql:version"]
            assert body["checks"]["postgresql:connections"][0]["observedValue"] == pool_counters(app)
        assert app.runtime.probe.last.time == db["postgresql:responseTime"][0]["time"]
        # The next /health/db does measure again (TTL 0), and /health follows it.
        again = (await client.get("/health/db")).json()["checks"]["postgresql:responseTime"]
        assert (await client.get("/health")).json()["checks"]["postgresql:responseTime"] == again


async def test_health_time_is_when_the_database_was_measured(make_db_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_db_settings(health_db_cache_ttl=60.0))) as client:
        first = (await client.get("/health/db")).json()["checks"]["postgresql:responseTime"][0]
        measured = parse_time(first["time"])
        assert datetime.now(UTC) - measured < timedelta(seconds=5)
        # Served from the cache: the same measurement, with the time it was made.
        second = (await client.get("/health/db")).json()["checks"]["postgresql:responseTime"][0]
        assert second == first


async def test_db_health_is_503_starting_up_before_the_lifespan_has_run(
    make_db_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_db_settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/health/db")
    assert response.status_code == 503
    assert response.json() == {"status": "fail", "output": "Starting up."}
