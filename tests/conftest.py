"""Shared fixtures: a real PostgreSQL (embedded 18, or TEST_DATABASE_URL), apps with their lifespan, uvicorn."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from svc.app import create_app
from svc.embedded import EmbeddedPostgres
from svc.settings import Environment, Settings, normalise_database_url

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The asyncpg URL of the test database: TEST_DATABASE_URL, or an embedded PostgreSQL 18."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield normalise_database_url(url)
        return
    server = EmbeddedPostgres(ROOT / ".data" / "test-postgres")
    try:
        yield normalise_database_url(server.start())
    finally:
        server.stop()


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    """Settings for tests: the test database, APP_ENV=test, overridable per field."""

    def make(**overrides: Any) -> Settings:
        base = Settings(app_env=Environment.TEST, database_url=database_url, log_format="json")
        return dataclasses.replace(base, **overrides)

    return make


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for `app` with its lifespan run (ASGITransport does not run it)."""
    async with app.router.lifespan_context(app):
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
    for name in [f.name.upper() for f in dataclasses.fields(Settings)]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class UvicornProcess:
    """A real `uvicorn svc.app:app` subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], cwd: Path, args: list[str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"uvicorn-{self.port}.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "svc.app:app", "--host", "127.0.0.1", "--port", str(self.port), *args],
            env=env,
            cwd=cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, path: str = "/health/live", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + path, timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"uvicorn did not answer {path} within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture
def uvicorn(database_url: str, tmp_path: Path) -> Iterator[Callable[..., UvicornProcess]]:
    """Start `uvicorn svc.app:app` with the given variables (on top of a test baseline) and wait for it."""
    started: list[UvicornProcess] = []

    def start(*args: str, wait: bool = True, **variables: str) -> UvicornProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DB_", "HEALTH_", "LOG_"))}
        env.update(APP_ENV="test", DATABASE_URL=database_url, LOG_FORMAT="json", PYTHONPATH=str(ROOT))
        env.update(variables)
        server = UvicornProcess(env, tmp_path, list(args))
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def migrated_database_url(database_url: str) -> str:
    """The test database, upgraded to the migration scripts' head once per session."""
    from svc.migrations import upgrade

    upgrade(Settings(app_env=Environment.TEST, database_url=database_url))
    return database_url


@pytest.fixture(autouse=True)
def _test_database_at_head(request: pytest.FixtureRequest) -> None:
    """Tests on the shared test database find its schema at head, as readiness requires (tests/test_migrations.py
    migrates databases of its own)."""
    if "database_url" in request.fixturenames:
        request.getfixturevalue("migrated_database_url")


# --- Database helpers (issue 3: the database layer and its health) ---------------------------------------------------


def asyncpg_dsn(url: str) -> str:
    """`url` (the service's postgresql+asyncpg:// form) as `asyncpg.connect()` takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


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
