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
