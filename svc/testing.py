"""svc's test kit: a pytest plugin for services built on svc (loaded by pytest once svc is installed).

Fixtures, on a real PostgreSQL: `TEST_DATABASE_URL`, or else an embedded PostgreSQL 18 with its
data in `.data/test-postgres` under pytest's root directory.

- `svc_service`: the `SERVICE` under test, None for the foundation alone. Override it in the
  `conftest.py` of the service's tests (`return "examples.notes.service:service"`).
- `svc_database_url`: a database of the service's own (a sibling of the test database, made anew
  in each test session), migrated to its scripts' head once per session.
- `svc_settings`: the settings of the app under test (`APP_ENV=test`, JSON logs, that database).
- `svc_app`: that app with its lifespan running and start-up finished: one per service for the
  whole session.
- `svc_client`: an `httpx.AsyncClient` on `svc_app`; `svc_db`: its `Database`. Within one test
  both see the same data, and nothing of it outlives the test: every session, connection and
  transaction of the app runs on one connection, inside a transaction rolled back at the end
  (`Database.isolated()`).

Tests that use `svc_app`, `svc_client` or `svc_db` run in the session's event loop (the plugin
marks them), as the app they share does. Needs pytest-asyncio and httpx (development dependencies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from svc.settings import Environment, LogFormat, Settings, normalise_database_url

if TYPE_CHECKING:
    import httpx

    from svc.app import App
    from svc.db import Database

__all__ = [
    "Databases",
    "settings_for_tests",
    "svc_app",
    "svc_client",
    "svc_database_url",
    "svc_databases",
    "svc_db",
    "svc_service",
    "svc_settings",
]

#: Fixtures whose tests share the session's event loop (the app's).
SESSION_LOOP_FIXTURES = frozenset({"svc_app", "svc_client", "svc_db"})


def settings_for_tests(database_url: str, service: str | None = None) -> Settings:
    """The settings tests run an app with: `APP_ENV=test`, JSON logs, `database_url`, `service`."""
    return Settings(app_env=Environment.TEST, database_url=database_url, log_format=LogFormat.JSON, service=service)


class Databases:
    """The test database, and one sibling database per service, each migrated to its head once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._migrated: dict[str | None, str] = {}

    def url_for(self, service: str | None) -> str:
        """The URL of `service`'s database (the test database itself for None), at its scripts' head."""
        if service not in self._migrated:
            from sqlalchemy.engine import make_url

            from svc.migrations import upgrade

            url = self.url
            if service is not None:
                base = make_url(self.url)
                name = f"{base.database}_{re.sub(r'[^a-z0-9]+', '_', service.partition(':')[0].lower())}"[:63]
                asyncio.run(_recreate(self.url, name))
                url = base.set(database=name).render_as_string(hide_password=False)
            upgrade(settings_for_tests(url, service))
            self._migrated[service] = url
        return self._migrated[service]


async def _recreate(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def svc_databases(pytestconfig: pytest.Config) -> Iterator[Databases]:
    """The session's test databases (see `Databases`)."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield Databases(normalise_database_url(url))
        return
    from svc.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(Path(pytestconfig.rootpath) / ".data" / "test-postgres")
    try:
        yield Databases(normalise_database_url(server.start()))
    finally:
        server.stop()


@pytest.fixture
def svc_service() -> str | None:
    """The service under test (a `SERVICE` value); None: svc's foundation alone."""
    return None


@pytest.fixture
def svc_database_url(svc_databases: Databases, svc_service: str | None) -> str:
    """The service's test database, migrated to its scripts' head."""
    return svc_databases.url_for(svc_service)


@pytest.fixture
def svc_settings(svc_database_url: str, svc_service: str | None) -> Settings:
    """The settings of the app under test."""
    return settings_for_tests(svc_database_url, svc_service)


class _Apps:
    """The session's apps, one per settings, each with its lifespan running until the session ends."""

    def __init__(self) -> None:
        self.apps: dict[Settings, App] = {}
        self.stack = contextlib.AsyncExitStack()

    async def get(self, settings: Settings) -> App:
        if settings not in self.apps:
            from svc.app import create_app, started

            app = create_app(settings)
            await self.stack.enter_async_context(app.lifespan_context(app))
            if not await started(app):
                raise RuntimeError("The app under test did not start (see the log)")
            self.apps[settings] = app
        return self.apps[settings]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def _svc_apps() -> AsyncIterator[_Apps]:
    apps = _Apps()
    async with apps.stack:
        yield apps


@pytest_asyncio.fixture(loop_scope="session")
async def svc_app(_svc_apps: _Apps, svc_settings: Settings) -> App:
    """The app under test, started (shared by the session's tests with the same settings)."""
    return await _svc_apps.get(svc_settings)


@pytest_asyncio.fixture(loop_scope="session")
async def _svc_isolation(svc_app: App) -> AsyncIterator[Database]:
    db = svc_app.runtime.database()
    async with db.isolated():
        yield db


@pytest_asyncio.fixture(loop_scope="session")
async def svc_db(_svc_isolation: Database) -> Database:
    """The app's `Database`, inside the test's transaction."""
    return _svc_isolation


@pytest_asyncio.fixture(loop_scope="session")
async def svc_client(svc_app: App, _svc_isolation: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app under test, inside the test's transaction."""
    import httpx

    transport = httpx.ASGITransport(app=svc_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that share the session's app in the session's event loop."""
    for item in items:
        if SESSION_LOOP_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            # First, so that it is the closest asyncio marker (pytest-asyncio's auto mode adds one without a scope).
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)
