"""Database.session(): one transaction per unit of work, transaction-local settings for row-level security,
and driver errors turned into problem+json without the driver's text. On a real PostgreSQL, in scratch databases.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from svc.app import create_app
from svc.db import Database
from svc.errors import DatabaseError, DatabaseUnavailable
from svc.settings import Settings
from tests.conftest import asyncpg_dsn, serve, with_database


@pytest.fixture
async def scratch(scratch_database: str) -> AsyncIterator[Any]:
    """A superuser asyncpg connection to the scratch database, with a table `items(id int primary key, name text)`."""
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    await conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def database(
    scratch_database: str, scratch: Any, make_settings: Callable[..., Settings]
) -> AsyncIterator[Database]:
    """The service's Database on the scratch database, with a one-connection pool (every session reuses it)."""
    db = Database(scratch_database, make_settings(db_pool_size=1, db_max_overflow=0))
    try:
        yield db
    finally:
        await db.dispose()


async def names(conn: Any) -> list[str]:
    return [row["name"] for row in await conn.fetch("SELECT name FROM items ORDER BY id")]


@pytest.mark.parametrize("cache_size", [100, 0], ids=["statement-cache", "pgbouncer-no-cache"])
async def test_session_commits_on_success(
    scratch_database: str, scratch: Any, make_settings: Callable[..., Settings], cache_size: int
) -> None:
    db = Database(
        scratch_database, make_settings(db_pool_size=1, db_max_overflow=0, db_statement_cache_size=cache_size)
    )
    try:
        for n in range(3):  # the same pooled connection each time
            async with db.session() as session:
                await session.execute(text("INSERT INTO items VALUES (:id, :name)"), {"id": n, "name": f"n{n}"})
        assert await names(scratch) == ["n0", "n1", "n2"]
        assert db.pool_stats().checked_out == 0
    finally:
        await db.dispose()


async def test_session_rolls_back_when_the_block_raises(database: Database, scratch: Any) -> None:
    async def insert_then_fail() -> None:
        async with database.session() as session:
            await session.execute(text("INSERT INTO items VALUES (1, 'lost')"))
            raise ValueError("not a database error")

    with pytest.raises(ValueError, match="not a database error"):
        await insert_then_fail()
    assert await names(scratch) == []
    assert database.pool_stats().checked_out == 0


async def test_session_rolls_back_and_hides_the_driver_text_on_a_database_error(
    database: Database, scratch: Any
) -> None:
    await scratch.execute("INSERT INTO items VALUES (1, 'kept')")

    async def insert_then_fail() -> None:
        async with database.session() as session:
            await session.execute(text("INSERT INTO items VALUES (2, 'lost')"))
            await session.execute(text("SELECT secret_column FROM items"))

    with pytest.raises(DatabaseError) as caught:
        await insert_then_fail()
    assert type(caught.value) is DatabaseError
    assert caught.value.status == 500
    assert "secret_column" not in str(caught.value)
    assert "items" not in str(caught.value)
    assert isinstance(caught.value.__cause__.orig.__cause__, asyncpg.UndefinedColumnError)  # type: ignore[union-attr]
    assert await names(scratch) == ["kept"]
    # The connection went back to the pool clean: the next session works.
    async with database.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM items"))).scalar_one() == 1


async def test_session_settings_are_transaction_local(database: Database) -> None:
    async with database.session(tenant="alpha", user_id="42") as session:
        row = (
            await session.execute(text("SELECT current_setting('app.tenant'), current_setting('app.user_id')"))
        ).one()
        assert tuple(row) == ("alpha", "42")
    # Same pooled connection, next transaction: the values are gone.
    async with database.session() as session:
        after = (await session.execute(text("SELECT current_setting('app.tenant', true)"))).scalar_one()
        assert after in (None, "")


async def test_session_setting_values_are_bound_not_spliced(database: Database, scratch: Any) -> None:
    value = "x'); DROP TABLE items; --"
    async with database.session(tenant=value) as session:
        assert (await session.execute(text("SELECT current_setting('app.tenant')"))).scalar_one() == value
    assert await scratch.fetchval("SELECT to_regclass('items') IS NOT NULL")


@pytest.mark.parametrize("name", ["bad-name", "x; SELECT 1", "1st", "", "a.b"])
async def test_session_setting_names_must_be_identifiers(database: Database, name: str) -> None:
    with pytest.raises(ValueError, match="Invalid setting name"):
        async with database.session(**{name: "v"}):
            pass
    assert database.pool_stats().checked_out == 0


# -- row-level security ------------------------------------------------------------------------------------------------


@pytest.fixture
async def tenant_database(
    scratch_database: str, scratch: Any, pg: Any, make_settings: Callable[..., Settings]
) -> AsyncIterator[Database]:
    """The scratch database with a row-level-secured `notes` table, as the service sees it through a login role
    that is neither superuser nor the table's owner (RLS applies to it)."""
    role = f"svc_rls_{uuid.uuid4().hex[:10]}"
    await pg.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS')
    await scratch.execute(
        f"""
        CREATE TABLE notes (id serial PRIMARY KEY, tenant text NOT NULL, body text NOT NULL);
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON notes
            USING (tenant = current_setting('app.tenant', true))
            WITH CHECK (tenant = current_setting('app.tenant', true));
        GRANT SELECT, INSERT ON notes TO "{role}";
        GRANT USAGE ON SEQUENCE notes_id_seq TO "{role}";
        INSERT INTO notes (tenant, body) VALUES ('a', 'a1'), ('a', 'a2'), ('b', 'b1');
        """
    )
    url = with_database(scratch_database, make_url(scratch_database).database or "", username=role)
    db = Database(url, make_settings(db_pool_size=1, db_max_overflow=0))
    try:
        yield db
    finally:
        await db.dispose()
        await scratch.execute(f'DROP OWNED BY "{role}"')
        await pg.execute(f'DROP ROLE "{role}"')


async def visible(db: Database, **config: str) -> list[str]:
    async with db.session(**config) as session:
        return list((await session.execute(text("SELECT body FROM notes ORDER BY id"))).scalars())


async def test_row_level_security_filters_rows_by_the_session_setting(tenant_database: Database, scratch: Any) -> None:
    async with tenant_database.session() as session:
        who = (
            await session.execute(text("SELECT current_user, usesuper FROM pg_user WHERE usename = current_user"))
        ).one()
        assert who[1] is False  # RLS binds this role
    assert await visible(tenant_database, tenant="a") == ["a1", "a2"]
    assert await visible(tenant_database, tenant="b") == ["b1"]
    assert await visible(tenant_database, tenant="c") == []
    # No setting, or the previous transaction's setting: nothing (the setting is transaction-local).
    assert await visible(tenant_database) == []
    # The superuser owner sees everything: the rows are there, the policy hides them.
    assert await scratch.fetchval("SELECT count(*) FROM notes") == 3


async def test_row_level_security_refuses_writes_for_another_tenant(tenant_database: Database, scratch: Any) -> None:
    async with tenant_database.session(tenant="b") as session:
        await session.execute(text("INSERT INTO notes (tenant, body) VALUES ('b', 'b2')"))
    with pytest.raises(DatabaseError) as caught:
        async with tenant_database.session(tenant="b") as session:
            await session.execute(text("INSERT INTO notes (tenant, body) VALUES ('a', 'sneaky')"))
    assert caught.value.status == 500
    assert "row-level security" not in str(caught.value)
    assert await visible(tenant_database, tenant="b") == ["b1", "b2"]
    assert await scratch.fetchval("SELECT count(*) FROM notes WHERE body = 'sneaky'") == 0


# -- errors inside requests ----------------------------------------------------------------------------------------------


def sql_route(path: str, *statements: str) -> Route:
    async def endpoint(request: Request) -> JSONResponse:
        async with request.app.runtime.database().session() as session:
            result = None
            for statement in statements:
                result = (await session.execute(text(statement))).scalar()
        return JSONResponse({"result": result})

    return Route(path, endpoint)


ROUTES = [
    sql_route("/ok", "SELECT 41 + 1"),
    sql_route("/division", "SELECT 1 / (SELECT count(*) FROM pg_class WHERE relname = 'no-such-secret-table')::int"),
    sql_route("/syntax", "SELEKT secret_column FROM secret_table"),
    sql_route("/statement-timeout", "SELECT set_config('statement_timeout', '50ms', true)", "SELECT pg_sleep(5)"),
    sql_route("/command-timeout", "SELECT pg_sleep(5)"),
]


class ErrorCase(NamedTuple):
    path: str
    status: int
    forbidden: list[str]  # the driver's words, which must not reach the body
    within: float  # seconds


ERROR_CASES = {
    "sql-error": ErrorCase("/division", 500, ["division by zero", "no-such-secret-table"], 1.0),
    "syntax-error": ErrorCase("/syntax", 500, ["SELEKT", "secret_column", "syntax error"], 1.0),
    "statement-timeout": ErrorCase("/statement-timeout", 503, ["canceling statement", "pg_sleep"], 1.0),
    "command-timeout": ErrorCase("/command-timeout", 503, ["pg_sleep", "TimeoutError"], 0.3 + 0.2),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
async def test_database_errors_in_requests_become_problems_without_driver_text(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, case: ErrorCase
) -> None:
    path, status, forbidden, within = case
    app = create_app(make_settings(db_command_timeout=0.3, db_pool_size=1, db_max_overflow=0), routes=ROUTES)
    async with serve(app) as client:
        start = time.perf_counter()
        response = await client.get(path)
        elapsed = time.perf_counter() - start
        assert response.status_code == status, response.text
        assert elapsed < within, elapsed
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status
        assert problem["instance"] == path
        assert problem["requestId"] == response.headers["x-request-id"]
        expected = DatabaseUnavailable if status == 503 else DatabaseError
        assert problem["detail"] == expected.detail
        for words in forbidden:
            assert words.lower() not in response.text.lower()
        # The failed transaction was rolled back and its connection is usable again.
        again = await client.get("/ok")
        assert again.json() == {"result": 42}
        assert app.runtime.db.pool_stats().checked_out == 0
    logged = [r for r in caplog.records if r.name == "svc.errors"]
    assert len(logged) == 1
    assert all(words.lower() not in logged[0].getMessage().lower() for words in forbidden if words != "TimeoutError")


async def test_a_pooled_connection_killed_by_the_server_is_replaced_transparently(
    make_settings: Callable[..., Settings], scratch_database: str, pg: Any
) -> None:
    """Without a pre-ping: the pool replaces the connection at checkout if asyncpg has seen its socket close, else
    when its BEGIN fails (tests/test_fast_path.py pins each case down alone)."""
    app = create_app(make_settings(database_url=scratch_database, db_pool_size=2), routes=ROUTES)
    async with serve(app) as client:
        assert (await client.get("/ok")).json() == {"result": 42}
        killed = await pg.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            make_url(scratch_database).database,
            app.runtime.settings.db_application_name,
        )
        assert killed == 1
        response = await client.get("/ok")
        assert response.status_code == 200, response.text
        assert response.json() == {"result": 42}


async def test_unhandled_non_database_error_still_rolls_back(
    make_settings: Callable[..., Settings], scratch_database: str, scratch: Any
) -> None:
    async def insert_then_fail(request: Request) -> JSONResponse:
        async with request.app.runtime.database().session() as session:
            await session.execute(text("INSERT INTO items VALUES (7, 'lost')"))
            raise RuntimeError("postgresql://user:secret@host/db")

    app = create_app(make_settings(database_url=scratch_database), routes=[Route("/fail", insert_then_fail)])
    async with serve(app) as client:
        response = await client.get("/fail")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret" not in response.text
    assert await names(scratch) == []


@pytest.mark.parametrize("how", ["terminate", "cancel"])
async def test_a_query_ended_by_the_server_gives_503(
    make_settings: Callable[..., Settings], scratch_database: str, pg: Any, how: str
) -> None:
    app = create_app(make_settings(database_url=scratch_database), routes=ROUTES)
    async with serve(app) as client:
        request = asyncio.ensure_future(client.get("/command-timeout"))  # pg_sleep(5)
        pid = None
        for _ in range(200):
            pid = await pg.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query = 'SELECT pg_sleep(5)'",
                make_url(scratch_database).database,
            )
            if pid:
                break
            await asyncio.sleep(0.01)
        assert pid
        start = time.perf_counter()
        assert await pg.fetchval(f"SELECT pg_{how}_backend($1)", pid)
        response = await request
        assert time.perf_counter() - start < 1.0
        assert response.status_code == 503, response.text
        assert (await client.get("/ok")).json() == {"result": 42}
