"""Database faults: each asserted on status, body and elapsed time, and none may leak the password.

The faults: the server stopped mid-run then restarted, a loopback socket that accepts and never
answers, a refused port, the pool exhausted by held connections, and start-up with the database down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from svc.app import create_app
from svc.embedded import EmbeddedPostgres
from svc.settings import Settings, normalise_database_url
from tests.conftest import PrivatePostgres, UvicornProcess, migrated_private_postgres, serve

PASSWORD = "S3cretPassw0rd-xyz"
USER = "svc_user"
TIMEOUT = 0.3  # HEALTH_DB_TIMEOUT for these tests: short, so each fault costs little
MARGIN = 0.1  # the contract: a failing check answers within HEALTH_DB_TIMEOUT + 100 ms


@pytest.fixture(autouse=True)
def _restore_log_level() -> Iterator[None]:
    """These tests log at DEBUG (to catch a leak at any level); later tests get the level back."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


async def query(request: Request) -> JSONResponse:
    """A route that needs a pooled connection."""
    async with request.app.runtime.database().session() as session:
        value = (await session.execute(text("SELECT 41 + 1"))).scalar_one()
    return JSONResponse({"value": value})


ROUTES = [Route("/query", query)]


@dataclass
class Timed:
    response: httpx.Response
    elapsed: float

    @property
    def body(self) -> Any:
        return self.response.json()


async def timed_get(client: httpx.AsyncClient, path: str) -> Timed:
    start = time.perf_counter()
    response = await client.get(path)
    return Timed(response, time.perf_counter() - start)


def fault_settings(make_settings: Callable[..., Settings], url: str, **overrides: Any) -> Settings:
    """Settings on `url` with short health bounds and a fresh measurement on every request."""
    values: dict[str, Any] = {
        "database_url": normalise_database_url(url),
        "health_db_timeout": TIMEOUT,
        "health_db_cache_ttl": 0.0,
        "db_connect_timeout": TIMEOUT,
        "health_db_warn_ms": 60_000.0,  # a busy machine may slow the first check; no fault here is a warning
        "log_level": "DEBUG",
    }
    values.update(overrides)
    return make_settings(**values)


async def assert_db_fails_fast(client: httpx.AsyncClient, *output_words: str) -> dict[str, Any]:
    """/health/db and /health/ready are 503 `fail` within the bound; return the /health/db body."""
    db = await timed_get(client, "/health/db")
    assert db.response.status_code == 503, db.response.text
    assert db.elapsed < TIMEOUT + MARGIN, db.elapsed
    assert db.response.headers["content-type"] == "application/health+json"
    body = db.body
    assert body["status"] == "fail"
    [latency] = body["checks"]["postgresql:responseTime"]
    assert latency["status"] == "fail"
    assert "observedValue" not in latency
    assert latency["output"] == body["output"]
    for word in output_words:
        assert word in body["output"]
    ready = await timed_get(client, "/health/ready")
    assert ready.response.status_code == 503
    assert ready.elapsed < TIMEOUT + MARGIN, ready.elapsed
    assert ready.body == {"status": "fail", "output": body["output"]}
    live = await timed_get(client, "/health/live")
    assert live.response.status_code == 200
    assert live.elapsed < MARGIN
    return body


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["detail"] == (
        "The database is unavailable or did not answer in time. Try again later."
        if status == 503
        else "A database error prevented the request from completing."
    )
    return problem


# -- unreachable servers: refused, silent --------------------------------------------------------------------------------


@pytest.fixture(params=["refused", "silent"])
def unreachable(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(URL with a password, words the /health/db output must contain) for a server that cannot be used."""
    port = request.getfixturevalue(f"{request.param}_port")
    url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/appdb"
    words = (
        "PostgreSQL refused the connection." if request.param == "refused" else f"did not answer within {TIMEOUT:g} s"
    )
    return url, words


async def test_unreachable_database_fails_health_within_the_timeout_and_never_leaks_the_url(
    make_settings: Callable[..., Settings],
    unreachable: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, word = unreachable
    port = url.rsplit(":", 1)[1].split("/")[0]
    app = create_app(fault_settings(make_settings, url), routes=ROUTES)
    bodies: list[str] = []
    async with serve(app) as client:
        for _ in range(2):  # the second check finds no connection left over from the first
            body = await assert_db_fails_fast(client, word)
            bodies.append(str(body))
        for secret in (PASSWORD, USER, "appdb", "127.0.0.1", port):
            assert secret not in body["output"]
        # /health stays 200: it reports the failed check as a warning, and does not check again.
        health = await timed_get(client, "/health")
        assert health.response.status_code == 200
        assert health.elapsed < MARGIN
        assert health.body["status"] == "warn"
        assert health.body["checks"]["postgresql:responseTime"][0]["status"] == "fail"
        # A request that needs the database gets a 503 problem, within the connect timeout.
        queried = await timed_get(client, "/query")
        problem = assert_problem(queried.response, 503)
        assert queried.elapsed < TIMEOUT + MARGIN, queried.elapsed
        bodies.extend(r.response.text for r in [health, queried])
        bodies.append(str(problem))
    everything = "\n".join([*bodies, caplog.text, *(r.getMessage() for r in caplog.records)])
    assert PASSWORD not in everything


async def test_start_up_with_the_database_down_serves_liveness_and_fails_readiness(
    make_settings: Callable[..., Settings], unreachable: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, word = unreachable
    app = create_app(fault_settings(make_settings, url))
    start = time.perf_counter()
    async with app.lifespan_context(app):
        started = time.perf_counter() - start
        assert started < TIMEOUT + MARGIN, started
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            live = await timed_get(client, "/health/live")
            assert live.response.status_code == 200
            assert live.body == {"status": "pass"}
            ready = await timed_get(client, "/health/ready")
            assert ready.response.status_code == 503
            assert ready.elapsed < TIMEOUT + MARGIN
            assert ready.body["status"] == "fail"
            assert word in ready.body["output"]
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 1.0
    assert PASSWORD not in caplog.text + ready.response.text


@pytest.mark.parametrize("path", ["/health/db", "/health/ready"])
async def test_without_details_a_failure_is_still_503_fail(
    make_settings: Callable[..., Settings], refused_port: int, path: str
) -> None:
    url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{refused_port}/appdb"
    async with serve(create_app(fault_settings(make_settings, url, health_show_details="never"))) as client:
        failed = await timed_get(client, path)
    assert failed.response.status_code == 503
    assert failed.elapsed < TIMEOUT + MARGIN
    assert failed.body["status"] == "fail"
    assert "output" not in failed.response.text
    assert "refused" not in failed.response.text


# -- the pool exhausted by held connections ------------------------------------------------------------------------------


async def test_exhausted_pool_gives_503_within_pool_timeout_while_health_still_answers(
    make_settings: Callable[..., Settings], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool_timeout = 0.3
    # The test servers trust their clients whatever the password: the URL carries one anyway.
    url = str(make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False))
    settings = fault_settings(make_settings, url, db_pool_size=2, db_max_overflow=1, db_pool_timeout=pool_timeout)
    app = create_app(settings, routes=ROUTES)
    async with serve(app) as client:
        assert (await client.get("/query")).json() == {"value": 42}
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                session = await stack.enter_async_context(app.runtime.db.session())
                await session.execute(text("SELECT 1"))
            queried = await timed_get(client, "/query")
            assert_problem(queried.response, 503)
            assert pool_timeout <= queried.elapsed < pool_timeout + MARGIN, queried.elapsed

            # The probe has a connection of its own: the database is fine, the pool is full.
            db = await timed_get(client, "/health/db")
            assert db.response.status_code == 200
            assert db.elapsed < TIMEOUT + MARGIN
            assert db.body["status"] == "warn"
            assert db.body["checks"]["postgresql:responseTime"][0]["status"] == "pass"
            [connections] = db.body["checks"]["postgresql:connections"]
            assert connections["status"] == "warn"
            assert connections["observedValue"] == {
                "size": 2,
                "checkedIn": 0,
                "checkedOut": 3,
                "overflow": 1,
                "maxOverflow": 1,
            }
            ready = await timed_get(client, "/health/ready")
            assert ready.response.status_code == 200
            assert ready.elapsed < TIMEOUT + MARGIN
            texts = [queried.response.text, db.response.text, ready.response.text]
        # Released: the route works again, and the pool is no longer a warning.
        assert (await client.get("/query")).json() == {"value": 42}
        assert (await client.get("/health/db")).json()["status"] == "pass"
    assert PASSWORD not in "\n".join([*texts, caplog.text])


# -- the server stopped mid-run, then restarted ------------------------------------------------------------------------


class OwnServer(PrivatePostgres):
    """This module's own embedded PostgreSQL, which tests may stop and start, with a URL that carries a password."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        # The embedded server trusts local connections whatever the password: the URL carries one anyway.
        self.url_with_password = self.url.replace("//postgres:@", f"//postgres:{PASSWORD}@")


@pytest.fixture(scope="module")
def own_server_for_module() -> Iterator[OwnServer]:
    with migrated_private_postgres(OwnServer, "svc-test-pg-") as server:
        yield server


@pytest.fixture
def own_server(own_server_for_module: OwnServer) -> Iterator[OwnServer]:
    """The module's own server, running at the start and at the end of the test."""
    own_server_for_module.start()
    yield own_server_for_module
    own_server_for_module.start()


async def test_db_health_fails_while_the_server_is_stopped_and_recovers_without_restarting_the_app(
    make_settings: Callable[..., Settings], own_server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(fault_settings(make_settings, own_server.url_with_password), routes=ROUTES)
    texts: list[str] = []
    async with serve(app) as client:
        db = await timed_get(client, "/health/db")
        assert db.response.status_code == 200
        assert db.body["status"] == "pass"
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/query")).json() == {"value": 42}

        await asyncio.to_thread(own_server.stop)
        for _ in range(2):
            body = await assert_db_fails_fast(client)
            # The socket is gone with the server: plain words, and no path.
            assert body["output"] == "The connection to PostgreSQL failed."
            texts.append(str(body))
        queried = await timed_get(client, "/query")
        assert_problem(queried.response, 503)
        assert queried.elapsed < TIMEOUT + MARGIN
        texts.append(queried.response.text)

        await asyncio.to_thread(own_server.start)
        db = await timed_get(client, "/health/db")
        assert db.response.status_code == 200, db.response.text
        assert db.elapsed < TIMEOUT + MARGIN
        assert db.body["status"] == "pass"
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/query")).json() == {"value": 42}
        texts.append(db.response.text)
    everything = "\n".join([*texts, caplog.text, *(r.getMessage() for r in caplog.records)])
    assert PASSWORD not in everything


async def test_readiness_turns_200_once_a_database_down_at_start_up_answers(
    make_settings: Callable[..., Settings], own_server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(own_server.stop)
    app = create_app(fault_settings(make_settings, own_server.url_with_password), routes=ROUTES)
    start = time.perf_counter()
    async with serve(app) as client:
        assert time.perf_counter() - start < TIMEOUT + MARGIN
        await assert_db_fails_fast(client)
        await asyncio.to_thread(own_server.start)
        ready = await timed_get(client, "/health/ready")
        assert ready.response.status_code == 200, ready.response.text
        assert ready.body == {"status": "pass"}
        assert (await client.get("/query")).json() == {"value": 42}
    assert PASSWORD not in caplog.text


def test_an_embedded_server_stops_only_when_the_last_handle_in_the_process_lets_go(own_server: OwnServer) -> None:
    # The app's lifespan and an in-process migration, say, on the same data directory.
    second = EmbeddedPostgres(own_server.embedded.data_dir)
    assert normalise_database_url(second.start()) == own_server.url
    second.stop()
    assert own_server.running()
    second.stop()  # letting go twice is harmless
    assert own_server.running()
    third = EmbeddedPostgres(own_server.embedded.data_dir)
    assert normalise_database_url(third.start()) == own_server.url
    third.stop()
    assert own_server.running()


# -- secrets, end to end -------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_uvicorn_never_prints_the_database_password(
    uvicorn: Callable[..., UvicornProcess], unreachable: tuple[str, str]
) -> None:
    url, word = unreachable
    server = uvicorn(DATABASE_URL=url, HEALTH_DB_TIMEOUT=str(TIMEOUT), LOG_LEVEL="DEBUG", HEALTH_DB_CACHE_TTL="0")
    bodies = []
    for path, status in [("/health/db", 503), ("/health/ready", 503), ("/health", 200), ("/health/live", 200)]:
        start = time.perf_counter()
        response = httpx.get(server.base_url + path, timeout=5)
        assert response.status_code == status
        assert time.perf_counter() - start < TIMEOUT + 0.5  # a real HTTP round trip on top of the bound
        bodies.append(response.text)
    # Right after start, the first answer may come before start-up has made the probe ("Starting up."): the reason follows.
    for _ in range(20):
        if word in bodies[-1]:
            break
        bodies.append(httpx.get(server.base_url + "/health/db", timeout=5).text)
    assert word in bodies[-1]
    server.stop()
    output = server.output()
    assert "Application shutdown complete" in output
    assert PASSWORD not in output
    assert PASSWORD not in "\n".join(bodies)


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/health/db", "/health/ready"])
def test_the_first_answer_after_start_is_bounded_by_the_budget_start_up_included(
    uvicorn: Callable[..., UvicornProcess], silent_port: int, path: str
) -> None:
    # Start-up (SQLAlchemy imported in the background) and the check share one budget from the request's arrival.
    budget = 0.8
    server = uvicorn(
        DATABASE_URL=f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{silent_port}/appdb", HEALTH_DB_TIMEOUT="0.8"
    )
    with httpx.Client(timeout=5) as client:  # made first: making a client costs more than a loopback round trip
        start = time.perf_counter()
        response = client.get(server.base_url + path)
        elapsed = time.perf_counter() - start
    assert response.status_code == 503
    assert elapsed < budget + 0.15, elapsed  # a loopback HTTP round trip on top of the budget
