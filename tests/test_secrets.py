"""Secrets never leave: every fault and error path driven with a database password, SECRET_KEY and HEALTH_TOKEN set.

All responses (status, headers, body) and all log output (records with their tracebacks, the JSON
lines the service writes, a real uvicorn's whole output) are searched for each secret: zero hits.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from svc.app import create_app
from svc.embedded import EmbeddedPostgres
from svc.settings import Environment, Settings, normalise_database_url
from tests.conftest import UvicornProcess, asyncpg_dsn, raw_exchange, serve, with_database

# With the characters a URL must escape: a leak may be the password as typed or as it stands in DATABASE_URL.
PASSWORD = "db-Pa55w0rd@7f3a%9c/1e5b"
ENCODED_PASSWORD = quote(PASSWORD, safe="")
SECRET_KEY = "secret-key-4b8d2e6f0a1c3e5a7b9d1f3e5a7c"
TOKEN = "health-token-9d8c7b6a5f4e3d2c"
SECRETS = {
    "DB password": PASSWORD,
    "DB password, percent-encoded": ENCODED_PASSWORD,
    "SECRET_KEY": SECRET_KEY,
    "HEALTH_TOKEN": TOKEN,
}
TIMEOUT = 0.3


async def query(request: Request) -> JSONResponse:
    async with request.app.runtime.database().session() as session:
        return JSONResponse({"value": (await session.execute(text("SELECT 41 + 1"))).scalar_one()})


async def division_by_zero(request: Request) -> JSONResponse:
    async with request.app.runtime.database().session() as session:
        await session.execute(text("SELECT 1 / 0"))
    return JSONResponse({})  # pragma: no cover - the query fails


async def boom(request: Request) -> Response:
    raise RuntimeError("an unexpected failure")


async def echo(request: Request) -> Response:
    return Response(str(len(await request.body())))


ROUTES = [
    Route("/query", query),
    Route("/dberror", division_by_zero),
    Route("/boom", boom),
    Route("/echo", echo, methods=["POST"]),
]
# (method, path, headers, body): every error path the app has, with and without credentials.
REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    *[
        (method, path, headers, b"")
        for path in ["/health", "/health/live", "/health/ready", "/health/db", "/metrics", "/openapi.json"]
        for method in ["GET", "HEAD"]
        for headers in [{}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer wrong-token"}]
    ],
    ("GET", "/query", {}, b""),
    ("GET", "/dberror", {}, b""),
    ("GET", "/boom", {}, b""),
    ("GET", "/nope", {}, b""),
    ("POST", "/health", {}, b""),
    ("POST", "/echo", {}, b"x" * 100),
    ("GET", "/health", {"Content-Length": "NaN"}, b""),
    ("GET", "/health", {"Host": "not-allowed.example"}, b""),
]


def assert_no_secret(texts: list[str]) -> None:
    everything = "\n".join(texts)
    assert everything.strip()
    # Case-insensitively: percent-encoding may be written with lower-case hex digits.
    leaked = [name for name, secret in SECRETS.items() if secret.lower() in everything.lower()]
    assert leaked == []


def render(response: httpx.Response) -> str:
    return f"{response.status_code} {response.headers!r}\n{response.text}"


def deployed_settings(make_settings: Callable[..., Settings], url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": Environment.STAGING,
        "database_url": normalise_database_url(url),
        "secret_key": SECRET_KEY,
        "health_token": TOKEN,
        "health_show_details": "when_authorized",
        "allowed_hosts": ("testserver",),
        "log_level": "DEBUG",
        "max_body_bytes": 64,
        "health_db_timeout": TIMEOUT,
        "health_db_cache_ttl": 0.0,
        "db_connect_timeout": TIMEOUT,
        "db_pool_size": 1,
        "db_max_overflow": 0,
        "db_pool_timeout": TIMEOUT,
    }
    return make_settings(**{**values, **overrides})


def log_texts(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> list[str]:
    """Everything logged: each record formatted with its traceback, and what the service's handler wrote."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    captured = capfd.readouterr()
    return [*(formatter.format(record) for record in caplog.records), captured.out, captured.err]


# Each error path taken at least once (whatever the database does), so the search has something to search.
ERRORS = {400, 401, 404, 405, 413, 500}


async def drive(client: httpx.AsyncClient) -> tuple[list[str], set[int]]:
    texts, statuses = [], set()
    for method, path, headers, body in REQUESTS:
        response = await client.request(method, path, headers=headers, content=body)
        texts.append(render(response))
        statuses.add(response.status_code)
    return texts, statuses


def assert_logged_the_errors(logs: list[str]) -> None:
    joined = "\n".join(logs)
    assert "Unhandled error in GET /boom" in joined
    assert "RuntimeError: an unexpected failure" in joined  # tracebacks are searched too


# -- the databases: a role with a password on the test server, and a server that checks passwords ----------------------


@pytest.fixture
async def password_url(pg: Any, database_url: str) -> AsyncIterator[str]:
    """The test database as a login role of its own, with PASSWORD (whether the server asks for it or not)."""
    role = f"svc_secret_{uuid.uuid4().hex[:8]}"
    await pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    await pg.execute(f"GRANT SELECT ON alembic_version TO {role}")
    try:
        yield with_database(database_url, make_url(database_url).database or "", username=role, password=PASSWORD)
    finally:
        await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await pg.execute(f"REVOKE ALL ON alembic_version FROM {role}")
        await pg.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def password_checking_server() -> Iterator[str]:
    """A private PostgreSQL that checks passwords (SCRAM) for role `svc_scram`, whose password is not PASSWORD.

    Returns the URL of that role with PASSWORD: the server refuses it.
    """
    # Not under pytest's basetemp: see tests/test_db_faults.py (the server's own user must reach the directory).
    parent = Path(tempfile.mkdtemp(prefix="svc-test-scram-"))
    server = EmbeddedPostgres(parent / "pg")
    try:
        url = server.start()

        async def configure() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("CREATE ROLE svc_scram LOGIN PASSWORD 'the-real-password-is-another-one'")
                hba = Path(await conn.fetchval("SHOW hba_file"))
                hba.write_text("local all svc_scram scram-sha-256\n" + hba.read_text())  # noqa: ASYNC240 - set-up
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

        import asyncio

        asyncio.run(configure())
        parts = make_url(url).set(username="svc_scram", password=PASSWORD)
        yield parts.render_as_string(hide_password=False)
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)


# -- in process: every fault, every error path ---------------------------------------------------------------------------


@pytest.fixture(params=["healthy", "refused", "silent", "wrong password"])
def fault(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(name, a database URL with PASSWORD in it), for each way the database can be (or not be) there."""
    name: str = request.param
    if name == "healthy":
        return name, request.getfixturevalue("password_url")
    if name == "wrong password":
        return name, request.getfixturevalue("password_checking_server")
    port = request.getfixturevalue(f"{name}_port")
    return name, f"postgresql://svc:{ENCODED_PASSWORD}@127.0.0.1:{port}/svc"


async def test_no_response_or_log_line_holds_a_secret_whatever_the_database_does(
    make_settings: Callable[..., Settings],
    fault: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    fault_name, url = fault
    caplog.set_level(logging.DEBUG)
    app = create_app(deployed_settings(make_settings, url), routes=ROUTES)
    async with serve(app) as client:
        texts, statuses = await drive(client)
    assert statuses >= ERRORS
    # 503 from /health/db and /health/ready, and from /query, exactly when the database cannot be used.
    assert (503 in statuses) is (fault_name != "healthy")
    logs = log_texts(caplog, capfd)
    assert_logged_the_errors(logs)
    assert_no_secret([*texts, *logs])


async def test_an_exhausted_pool_leaks_no_secret(
    make_settings: Callable[..., Settings],
    password_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(deployed_settings(make_settings, password_url), routes=ROUTES)
    async with serve(app) as client, contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(app.runtime.db.session())
        await session.execute(text("SELECT 1"))  # the pool's only connection, held
        exhausted = await client.get("/query")
        assert exhausted.status_code == 503
        texts, statuses = await drive(client)
    assert statuses >= ERRORS | {503}
    logs = log_texts(caplog, capfd)
    assert_logged_the_errors(logs)
    assert_no_secret([render(exhausted), *texts, *logs])


def test_the_password_checking_server_really_refuses_the_password(password_checking_server: str) -> None:
    import asyncio

    async def connect() -> None:
        await asyncpg.connect(asyncpg_dsn(password_checking_server))

    with pytest.raises(asyncpg.InvalidPasswordError) as refused:
        asyncio.run(connect())
    assert PASSWORD not in str(refused.value)


# -- a real uvicorn -------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("database", ["healthy", "refused"])
def test_uvicorn_prints_and_answers_no_secret(
    uvicorn: Callable[..., UvicornProcess], request: pytest.FixtureRequest, database: str
) -> None:
    if database == "healthy":
        url = request.getfixturevalue("password_url")
    else:
        url = f"postgresql://svc:{ENCODED_PASSWORD}@127.0.0.1:{request.getfixturevalue('refused_port')}/svc"
    server = uvicorn(
        wait=False,
        APP_ENV="staging",
        DATABASE_URL=url,
        SECRET_KEY=SECRET_KEY,
        HEALTH_TOKEN=TOKEN,
        LOG_LEVEL="DEBUG",
        HEALTH_DB_TIMEOUT=str(TIMEOUT),
        HEALTH_DB_CACHE_TTL="0",
        MAX_BODY_BYTES="64",
        ALLOWED_HOSTS="127.0.0.1",
        SHUTDOWN_DRAIN_SECONDS="0",  # staging's 5 s drain would only delay the stop
    )
    server.wait_ready()
    texts = []
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        for method, path, headers, body in REQUESTS:
            if "Content-Length" not in headers:  # httpx refuses to send a bad one: sent raw below
                texts.append(render(client.request(method, path, headers=headers, content=body)))
    for raw in [b"BROKEN\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: NaN\r\n\r\n"]:
        texts.append(raw_exchange(server.port, raw).decode("latin-1"))
    assert server.stop() == 0
    output = server.output()
    assert "Application shutdown complete" in output
    assert_no_secret([*texts, output])
