"""svc.postgres: every kind of connection opened from one set of options, the driver's own errors, which server."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import NullPool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from svc.postgres import Purpose, connect_kwargs, connector, database_url, driver_error, engine_arguments
from svc.settings import Environment, Settings

URL = "postgresql+asyncpg://svc:pw@db.internal:6432/app?ssl=require"


@pytest.mark.parametrize(
    ("purpose", "application_name", "command_timeout"),
    [(Purpose.POOL, "svc", 30.0), (Purpose.HEALTH, "svc:health", 30.0), (Purpose.MIGRATE, "svc:migrate", None)],
    ids=["pool", "health", "migrate"],
)
def test_connections_differ_only_by_purpose(
    purpose: Purpose, application_name: str, command_timeout: float | None
) -> None:
    settings = Settings(db_connect_timeout=4.0, db_command_timeout=30.0, db_statement_cache_size=50)
    options = {
        "timeout": 4.0,
        "command_timeout": command_timeout,
        "statement_cache_size": 50,
        "server_settings": {"application_name": application_name},
    }
    assert connect_kwargs(URL, settings, purpose) == {
        "host": "db.internal",
        "port": 6432,
        "user": "svc",
        "password": "pw",
        "database": "app",
        "ssl": "require",
        **options,
    }
    engine_url, connect_args = engine_arguments(URL, settings, purpose)
    assert engine_url.render_as_string(hide_password=False) == URL
    assert connect_args == options


def test_application_name_with_its_suffix_fits_postgresqls_limit() -> None:
    settings = Settings(db_application_name="x" * 63)
    assert connect_kwargs(URL, settings, Purpose.HEALTH)["server_settings"] == {"application_name": "x" * 63}


def test_without_a_statement_cache_engines_name_every_prepared_statement_uniquely() -> None:
    engine_url, connect_args = engine_arguments(URL, Settings(db_statement_cache_size=0), Purpose.POOL)
    assert engine_url.query["prepared_statement_cache_size"] == "0"
    name = connect_args["prepared_statement_name_func"]
    assert name() != name()
    assert name().startswith("__asyncpg_")


async def test_connector_connects_as_the_health_connections_do(
    database_url: str, make_settings: Callable[..., Settings], pg: asyncpg.Connection
) -> None:
    conn = await connector(database_url, make_settings(), Purpose.HEALTH)(5.0)
    try:
        pid = conn.get_server_pid()
        name = await pg.fetchval("SELECT application_name FROM pg_stat_activity WHERE pid = $1", pid)
        assert name == "svc:health"
    finally:
        await conn.close()


async def test_driver_error_is_asyncpgs_own_exception_behind_sqlalchemys(database_url: str) -> None:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        with pytest.raises(DBAPIError) as raised:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1 / 0"))
    finally:
        await engine.dispose()
    assert isinstance(driver_error(raised.value), asyncpg.DivisionByZeroError)
    plain = ValueError("not wrapped")
    assert driver_error(plain) is plain


async def test_database_url_is_database_url_when_set(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with database_url(settings) as url:
        assert url == settings.database_url


@pytest.mark.parametrize("environment", [Environment.STAGING, Environment.PRODUCTION])
async def test_database_url_never_starts_the_embedded_server_when_deployed(
    environment: Environment, tmp_path: Path
) -> None:
    settings = dataclasses.replace(Settings(), app_env=environment, embedded_pg_dir=tmp_path / "pg")
    with pytest.raises(RuntimeError, match=f"DATABASE_URL is required when APP_ENV is {environment}"):
        async with database_url(settings):
            pass
    assert not (tmp_path / "pg").exists()
