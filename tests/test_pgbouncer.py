"""Through a real PgBouncer in transaction pooling mode, with DB_STATEMENT_CACHE_SIZE=0.

A server connection serves whichever client transaction comes next, so nothing may outlive a
transaction: no named prepared statement (asyncpg's cache, SQLAlchemy's, or one named per connection
by a counter that restarts on every client connection) and no session-level setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from svc.app import create_app
from svc.db import Database
from svc.settings import Settings
from tests.conftest import PgBouncer, serve

SESSIONS = 200
POOL = 5


def through(pgbouncer: PgBouncer, make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": pgbouncer.url,
        "db_statement_cache_size": 0,
        "db_pool_size": POOL,
        "db_max_overflow": 0,
        "db_pool_timeout": 30.0,
        "health_db_cache_ttl": 0.0,
    }
    values.update(overrides)
    return make_settings(**values)


async def rls_round_trip(db: Database, tenant: int) -> tuple[str, int]:
    """A session with a transaction-local setting, a parameterised query (a prepared statement), and a second one."""
    async with db.session(tenant=str(tenant)) as session:
        setting = (await session.execute(text("SELECT current_setting('app.tenant')"))).scalar_one()
        doubled = (await session.execute(text("SELECT CAST(:n AS integer) * 2"), {"n": tenant})).scalar_one()
    return setting, doubled


async def test_health_endpoints_pass_through_pgbouncer(
    pgbouncer: PgBouncer, make_settings: Callable[..., Settings]
) -> None:
    async with serve(create_app(through(pgbouncer, make_settings))) as client:
        for _ in range(3):  # the probe and schema check reuse their connection between checks
            db = await client.get("/health/db")
            assert db.status_code == 200, db.text
            assert db.json()["status"] == "pass"
            assert (await client.get("/health/ready")).status_code == 200


async def test_concurrent_sessions_and_rls_settings_work_without_prepared_statement_clashes(
    pgbouncer: PgBouncer, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(through(pgbouncer, make_settings))
    async with serve(app) as client:
        db: Database = app.runtime.db
        results = await asyncio.gather(*(rls_round_trip(db, n) for n in range(SESSIONS)))
        # Each transaction saw its own setting, never another's (and none leaked out of its transaction).
        assert results == [(str(n), 2 * n) for n in range(SESSIONS)]
        async with db.session() as session:
            assert (await session.execute(text("SELECT current_setting('app.tenant', true)"))).scalar_one() in (
                "",
                None,
            )
        assert (await client.get("/health/db")).json()["status"] == "pass"
    assert "prepared statement" not in pgbouncer.output()


async def test_with_the_statement_cache_on_pgbouncer_transaction_mode_breaks(
    pgbouncer: PgBouncer, make_settings: Callable[..., Settings]
) -> None:
    # The control: the same load with the default cache clashes, so the test above can tell. (PgBouncer 1.21 and later
    # can track prepared statements and avoid the clash; the fixture turns that off.)
    app = create_app(through(pgbouncer, make_settings, db_statement_cache_size=100))
    async with serve(app):
        db: Database = app.runtime.db
        results = await asyncio.gather(*(rls_round_trip(db, n) for n in range(SESSIONS)), return_exceptions=True)
    assert any(isinstance(result, Exception) for result in results)


async def fast_round_trip(db: Database, tenant: int) -> tuple[int, str, int]:
    """The fast path: a parameterised autocommit read, then a transaction with a setting and a parameterised query."""
    async with db.connection() as conn:
        tripled = await conn.fetchval("SELECT $1::integer * 3", tenant)
    async with db.transaction(tenant=str(tenant)) as conn:
        setting = await conn.fetchval("SELECT current_setting('app.tenant')")
        doubled = await conn.fetchval("SELECT $1::integer * 2", tenant)
    return tripled, setting, doubled


async def test_the_fast_path_works_through_pgbouncer_without_prepared_statement_clashes(
    pgbouncer: PgBouncer, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(through(pgbouncer, make_settings))
    async with serve(app):
        db: Database = app.runtime.db
        results = await asyncio.gather(*(fast_round_trip(db, n) for n in range(SESSIONS)))
        assert results == [(3 * n, str(n), 2 * n) for n in range(SESSIONS)]
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT current_setting('app.tenant', true)") in ("", None)
    assert "prepared statement" not in pgbouncer.output()
