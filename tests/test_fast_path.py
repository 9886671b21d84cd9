"""The database's ways in for handlers, on a real PostgreSQL in scratch databases: the fast path (`connection()`,
`transaction()`), `run()` with retries, errors mapped at one boundary, round trips counted, dead connections replaced
without a pre-ping, and `isolated()` for tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from svc.db import Database, database_error
from svc.errors import (
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    ServiceError,
    ServiceUnavailable,
    UnprocessableContent,
    render,
)
from svc.settings import Settings
from tests.conftest import asyncpg_dsn

SCHEMA = """
CREATE TABLE parents (id int PRIMARY KEY);
CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    qty int CONSTRAINT items_qty_positive CHECK (qty > 0),
    parent int REFERENCES parents (id)
);
CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO parents VALUES (1);
INSERT INTO items VALUES (1, 'taken', 1, 1);
INSERT INTO counter VALUES (1, 0);
"""


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]


@pytest.fixture
async def scratch(scratch_database: str) -> AsyncIterator[Any]:
    """A superuser asyncpg connection to the scratch database, with the tables above."""
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    await conn.execute(SCHEMA)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def make_db(
    scratch_database: str, scratch: Any, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Database]]:
    """`make_db(**settings)`: a Database on the scratch database (one connection unless told), disposed afterwards."""
    made: list[Database] = []

    def make(**overrides: Any) -> Database:
        db = Database(scratch_database, make_settings(**{"db_pool_size": 1, "db_max_overflow": 0, **overrides}))
        made.append(db)
        return db

    yield make
    for db in made:
        await db.dispose()


@pytest.fixture
def db(make_db: Callable[..., Database]) -> Database:
    return make_db()


# -- each way of running one statement -------------------------------------------------------------------------------


async def via_session(db: Database, sql: str) -> Any:
    async with db.session() as session:
        return (await session.execute(text(sql))).scalar()


async def via_connection(db: Database, sql: str) -> Any:
    async with db.connection() as conn:
        return await conn.fetchval(sql)


async def via_transaction(db: Database, sql: str) -> Any:
    async with db.transaction() as conn:
        return await conn.fetchval(sql)


async def via_run(db: Database, sql: str) -> Any:
    return await db.run(lambda conn: conn.fetchval(sql))


async def via_run_session(db: Database, sql: str) -> Any:
    async def work(session: Any) -> Any:
        return (await session.execute(text(sql))).scalar()

    return await db.run_session(work)


WAYS: dict[str, Callable[[Database, str], Awaitable[Any]]] = {
    "session": via_session,
    "connection": via_connection,
    "transaction": via_transaction,
    "run": via_run,
    "run_session": via_run_session,
}


# -- round trips ------------------------------------------------------------------------------------------------------


def record_statements(db: Database, driver: Any) -> list[str]:
    """Every statement sent on `driver` from now on: asyncpg's query logger sees the fast path and every
    BEGIN/COMMIT/ROLLBACK (and a pre-ping's `;`), SQLAlchemy's events see the ORM's own statements."""
    sent: list[str] = []
    driver.add_query_logger(lambda logged: sent.append(logged.query))
    event.listen(db.sync_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


class Trips(NamedTuple):
    run: Callable[[Database], Awaitable[Any]]
    statements: list[str]


async def read_session(db: Database) -> Any:
    async with db.session() as session:
        return (await session.execute(text("SELECT 41 + 1"))).scalar_one()


async def read_session_tenant(db: Database) -> Any:
    async with db.session(tenant="7") as session:
        return (await session.execute(text("SELECT 41 + 1"))).scalar_one()


async def read_session_autocommit(db: Database) -> Any:
    async with db.session(autocommit=True) as session:
        return (await session.execute(text("SELECT 41 + 1"))).scalar_one()


async def read_connection(db: Database) -> Any:
    async with db.connection() as conn:
        return await conn.fetchval("SELECT 41 + 1")


async def read_transaction(db: Database) -> Any:
    async with db.transaction() as conn:
        return await conn.fetchval("SELECT 41 + 1")


async def read_transaction_tenant(db: Database) -> Any:
    async with db.transaction(tenant="7", user="x") as conn:
        return await conn.fetchval("SELECT 41 + 1")


SET_ONE = "SELECT set_config($1, $2, true)"
TRIPS = {
    "connection": Trips(read_connection, ["SELECT 41 + 1"]),
    "transaction": Trips(read_transaction, ["BEGIN;", "SELECT 41 + 1", "COMMIT;"]),
    "transaction-settings": Trips(
        read_transaction_tenant,
        ["BEGIN;", "SELECT set_config($1, $2, true), set_config($3, $4, true)", "SELECT 41 + 1", "COMMIT;"],
    ),
    "session": Trips(read_session, ["BEGIN;", "SELECT 41 + 1", "COMMIT;"]),
    "session-autocommit": Trips(read_session_autocommit, ["SELECT 41 + 1"]),
    "session-settings": Trips(read_session_tenant, ["BEGIN;", SET_ONE, "SELECT 41 + 1", "COMMIT;"]),
}


@pytest.mark.parametrize("trips", TRIPS.values(), ids=TRIPS.keys())
async def test_statements_sent_per_unit_of_work_on_a_healthy_pool(db: Database, trips: Trips) -> None:
    assert await trips.run(db) == 42  # the connection exists and its statement cache is warm
    async with db.connection() as conn:  # the pool's one connection
        driver = conn._driver
    sent = record_statements(db, driver)
    assert await trips.run(db) == 42
    await asyncio.sleep(0.01)  # asyncpg calls its query loggers soon, not at once
    # No pre-ping on checkout, nothing on check-in, and a fast-path read is exactly one statement. (Sorted: the
    # query loggers are called soon, SQLAlchemy's events at once.)
    assert sorted(sent) == sorted(trips.statements)


async def test_an_autocommit_session_stores_what_the_block_added_changed_or_deleted(db: Database, scratch: Any) -> None:
    async with db.session(autocommit=True) as session:
        session.add(Counter(id=2, n=5))
    assert await scratch.fetchval("SELECT n FROM counter WHERE id = 2") == 5
    async with db.session(autocommit=True) as session:
        (await session.get_one(Counter, 2)).n = 6
    assert await scratch.fetchval("SELECT n FROM counter WHERE id = 2") == 6
    async with db.session(autocommit=True) as session:
        await session.delete(await session.get_one(Counter, 2))
    assert await scratch.fetchval("SELECT count(*) FROM counter WHERE id = 2") == 0


@pytest.mark.parametrize("extra", [{"tenant": "7"}, {"isolation": "serializable"}])
async def test_an_autocommit_session_takes_no_settings_or_isolation(db: Database, extra: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="no transaction"):
        async with db.session(autocommit=True, **extra):  # type: ignore[arg-type]
            pass


async def test_the_fast_path_uses_the_pool_and_its_counters(db: Database) -> None:
    async with db.connection() as conn:
        assert db.pool_stats().checked_out == 1
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    assert db.pool_stats().checked_out == 0
    async with db.session() as session:  # the same pooled connection
        assert (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one() == pid


# -- transactions and settings --------------------------------------------------------------------------------------


async def test_a_transaction_commits_on_success_and_rolls_back_when_the_block_raises(
    db: Database, scratch: Any
) -> None:
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 10, "kept")

    async def insert_then_fail() -> None:
        async with db.transaction() as conn:
            await conn.executemany("INSERT INTO items (id, name) VALUES ($1, $2)", [(11, "lost"), (12, "lost")])
            raise ValueError("not a database error")

    with pytest.raises(ValueError, match="not a database error"):
        await insert_then_fail()
    assert await scratch.fetchval("SELECT array_agg(name ORDER BY id) FROM items") == ["taken", "kept"]
    assert db.pool_stats().checked_out == 0


async def test_transaction_settings_are_transaction_local_and_bound(db: Database) -> None:
    value = "x'); DROP TABLE items; --"
    async with db.transaction(tenant=value) as conn:
        assert await conn.fetchval("SELECT current_setting('app.tenant')") == value
    async with db.connection() as conn:  # same connection, after the transaction
        assert await conn.fetchval("SELECT current_setting('app.tenant', true)") in ("", None)
        assert await conn.fetchval("SELECT to_regclass('items') IS NOT NULL")


@pytest.mark.parametrize("way", ["transaction", "session"])
@pytest.mark.parametrize("isolation", ["serializable", "repeatable_read"])
async def test_isolation_level_is_applied_and_not_kept(db: Database, way: str, isolation: str) -> None:
    expected = isolation.replace("_", " ")
    if way == "transaction":
        async with db.transaction(isolation=isolation) as conn:  # type: ignore[arg-type]
            assert await conn.fetchval("SHOW transaction_isolation") == expected
    else:
        async with db.session(isolation=isolation) as session:  # type: ignore[arg-type]
            assert (await session.execute(text("SHOW transaction_isolation"))).scalar_one() == expected
    async with db.transaction() as conn:
        assert await conn.fetchval("SHOW transaction_isolation") == "read committed"


async def test_a_connection_left_in_a_transaction_is_not_reused(db: Database, scratch: Any) -> None:
    async with db.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("BEGIN; INSERT INTO items (id, name) VALUES (20, 'uncommitted')")
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") != pid
    assert await scratch.fetchval("SELECT count(*) FROM items WHERE id = 20") == 0


# -- errors at one boundary -----------------------------------------------------------------------------------------


class ErrorCase(NamedTuple):
    sql: str
    problem: type[ServiceError]
    status: int
    field_detail: str | None = None


def raise_sqlstate(code: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'secret-value-{code}' USING ERRCODE = '{code}'; END $$"


ERRORS = {
    "unique": ErrorCase("INSERT INTO items (id, name) VALUES (1, 'secret-value-unique')", Conflict, 409),
    "foreign-key": ErrorCase("INSERT INTO items (id, name, parent) VALUES (2, 'secret-value-fk', 99)", Conflict, 409),
    "not-null": ErrorCase(
        "INSERT INTO items (id, name, qty) VALUES (3, NULL, 12345)",
        UnprocessableContent,
        422,
        "A value is required for name.",
    ),
    "check": ErrorCase(
        "INSERT INTO items (id, name, qty) VALUES (4, 'secret-value-check', -12345)",
        UnprocessableContent,
        422,
        "A value violates the constraint items_qty_positive.",
    ),
    "serialization": ErrorCase(raise_sqlstate("40001"), ServiceUnavailable, 503),
    "deadlock": ErrorCase(raise_sqlstate("40P01"), ServiceUnavailable, 503),
    "other": ErrorCase(
        "SELECT 1 / (SELECT count(*) FROM items WHERE name = 'secret-value-none')::int", DatabaseError, 500
    ),
}


@pytest.mark.parametrize("way", WAYS.values(), ids=WAYS.keys())
@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
async def test_database_errors_become_the_same_problems_by_every_way(
    db: Database, scratch: Any, way: Callable[[Database, str], Awaitable[Any]], case: ErrorCase
) -> None:
    with pytest.raises(ServiceError) as caught:
        await way(db, case.sql)
    error = caught.value
    assert type(error) is case.problem
    assert error.status == case.status
    driver_text = str(error.__cause__)
    response = render(error, {"path": "/items", "method": "POST"})
    body = bytes(response.body).decode()
    for shown in (body, str(error)):
        assert "secret-value" not in shown
        assert "12345" not in shown
        assert driver_text not in shown
    if case.status == 503:
        assert error.headers == {"Retry-After": "1"}
    if isinstance(error, UnprocessableContent):
        assert [e.detail for e in error.errors] == [case.field_detail]
    # Nothing was written, and the connection is usable again.
    assert await scratch.fetchval("SELECT count(*) FROM items") == 1
    assert await via_connection(db, "SELECT 41 + 1") == 42
    assert db.pool_stats().checked_out == 0


@pytest.mark.parametrize("way", WAYS.values(), ids=WAYS.keys())
async def test_a_connection_the_server_refuses_is_the_same_problem_by_every_way(
    make_settings: Callable[..., Settings], database_url: str, way: Callable[[Database, str], Awaitable[Any]]
) -> None:
    missing = str(make_url(database_url).set(database="svc_no_such_database"))
    db = Database(missing, make_settings(db_pool_size=1, db_max_overflow=0))
    try:
        with pytest.raises(DatabaseError) as caught:
            await way(db, "SELECT 1")
        assert "svc_no_such_database" not in str(caught.value)
        assert db.pool_stats().checked_out == 0
    finally:
        await db.dispose()


def test_errors_that_are_not_the_databases_are_a_500_problem() -> None:
    assert type(database_error(RuntimeError("boom"))) is DatabaseError


# -- run(): retries --------------------------------------------------------------------------------------------------


async def increment_with_interference(db: Database, scratch: Any, interfere: int, retries: int, way: str) -> int:
    """Add 1 to the counter in a repeatable-read transaction, while another connection updates it between the read
    and the write of the first `interfere` attempts (a serialization failure each). The number of attempts."""
    attempts = 0

    async def between() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= interfere:
            await scratch.execute("UPDATE counter SET n = n + 100")

    async def work_conn(conn: Any) -> None:
        await conn.fetchval("SELECT n FROM counter")
        await between()
        await conn.execute("UPDATE counter SET n = n + 1")

    async def work_session(session: Any) -> None:
        await session.execute(text("SELECT n FROM counter"))
        await between()
        await session.execute(text("UPDATE counter SET n = n + 1"))

    if way == "run":
        await db.run(work_conn, retries=retries, isolation="repeatable_read")
    else:
        await db.run_session(work_session, retries=retries, isolation="repeatable_read")
    return attempts


@pytest.mark.parametrize("way", ["run", "run_session"])
async def test_run_reruns_work_after_a_serialization_failure(db: Database, scratch: Any, way: str) -> None:
    assert await increment_with_interference(db, scratch, interfere=2, retries=3, way=way) == 3
    assert await scratch.fetchval("SELECT n FROM counter") == 201


@pytest.mark.parametrize("way", ["run", "run_session"])
@pytest.mark.parametrize("retries", [0, 2])
async def test_run_gives_a_503_with_retry_after_when_retries_are_spent(
    db: Database, scratch: Any, way: str, retries: int
) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        await increment_with_interference(db, scratch, interfere=retries + 1, retries=retries, way=way)
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "1"}
    assert await scratch.fetchval("SELECT n FROM counter") == 100 * (retries + 1)


async def test_run_does_not_rerun_work_for_other_errors(db: Database) -> None:
    attempts = 0

    async def work(conn: Any) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute("INSERT INTO items (id, name) VALUES (1, 'duplicate')")

    with pytest.raises(Conflict):
        await db.run(work, retries=3)
    assert attempts == 1


# -- dead connections, without a pre-ping -----------------------------------------------------------------------------


async def pooled_pids(pg: Any, db: Database, scratch_database: str) -> list[int]:
    return list(
        await pg.fetchval(
            "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            make_url(scratch_database).database,
            db.settings.db_application_name,
        )
    )


def terminate_blocking(database_url: str, pids: list[int]) -> None:
    """Terminate `pids` and wait until they are gone, blocking the caller's event loop all along: the pool's
    connection has not yet seen its socket close when the next statement is sent."""

    async def terminate() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM unnest($1::int[]) AS pid", pids)
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(terminate(),))
    thread.start()
    thread.join()


@pytest.mark.parametrize("way", WAYS.values(), ids=WAYS.keys())
async def test_a_connection_the_server_closed_is_replaced_at_checkout(
    db: Database, pg: Any, scratch_database: str, way: Callable[[Database, str], Awaitable[Any]]
) -> None:
    before = await way(db, "SELECT pg_backend_pid()")
    assert await pooled_pids(pg, db, scratch_database) == [before]
    await pg.execute("SELECT pg_terminate_backend($1, 5000)", before)
    await asyncio.sleep(0.05)  # the pool's connection sees its socket close
    after = await way(db, "SELECT pg_backend_pid()")
    assert after != before


@pytest.mark.parametrize("way", ["session", "transaction", "run", "run_session"])
async def test_a_connection_closed_unseen_is_replaced_when_its_begin_fails(
    db: Database, pg: Any, scratch_database: str, database_url: str, way: str
) -> None:
    before = await WAYS[way](db, "SELECT pg_backend_pid()")
    terminate_blocking(database_url, [before])
    after = await WAYS[way](db, "SELECT pg_backend_pid()")
    assert after != before


async def test_an_autocommit_statement_on_a_connection_closed_unseen_is_a_503_then_the_pool_recovers(
    db: Database, database_url: str
) -> None:
    # Its outcome cannot be known in general (a write may have committed), so it is not sent again.
    before = await via_connection(db, "SELECT pg_backend_pid()")
    terminate_blocking(database_url, [before])
    with pytest.raises(DatabaseUnavailable):
        await via_connection(db, "SELECT pg_backend_pid()")
    assert await via_connection(db, "SELECT pg_backend_pid()") != before


# -- the pool's lane: the fast path takes pooled connections and gives them back itself ------------------------------


async def server_pids(pg: Any, db: Database, scratch_database: str, count: int) -> list[int]:
    """The pool's server connections once there are `count` of them (a closed one takes a moment to go)."""
    for _ in range(100):
        pids = await pooled_pids(pg, db, scratch_database)
        if len(pids) == count:
            break
        await asyncio.sleep(0.02)
    return pids


async def test_the_fast_path_waits_its_turn_behind_a_session_and_then_gets_its_connection(db: Database) -> None:
    async with db.session() as session:
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        waiting = asyncio.create_task(via_connection(db, "SELECT pg_backend_pid()"))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # a pool of one: the session has it
    assert await waiting == pid


async def test_waiters_of_either_kind_are_served_in_the_order_they_came(db: Database) -> None:
    served: list[str] = []

    async def fast(name: str) -> None:
        async with db.connection() as conn:
            served.append(f"{name}:{await conn.fetchval('SELECT 1')}")

    async def orm(name: str) -> None:
        async with db.session() as session:
            served.append(f"{name}:{(await session.execute(text('SELECT 1'))).scalar_one()}")

    waiting = []
    async with db.connection():
        for name, way in [("a", orm), ("b", fast), ("c", orm), ("d", fast)]:
            waiting.append(asyncio.create_task(way(name)))
            await asyncio.sleep(0.02)
        assert served == []
    await asyncio.gather(*waiting)
    assert served == ["a:1", "b:1", "c:1", "d:1"]


async def test_the_fast_path_is_a_503_once_the_pool_timeout_passes_with_every_connection_taken(
    make_db: Callable[..., Database],
) -> None:
    db = make_db(db_pool_timeout=0.2)
    async with db.connection():
        started = asyncio.get_running_loop().time()
        with pytest.raises(DatabaseUnavailable):
            await via_connection(db, "SELECT 1")
        assert asyncio.get_running_loop().time() - started >= 0.2
    assert await via_connection(db, "SELECT 1") == 1


async def test_the_fast_path_reconnects_a_connection_due_for_recycling(
    make_db: Callable[..., Database], pg: Any, scratch_database: str
) -> None:
    db = make_db(db_pool_recycle=1)
    before = await via_connection(db, "SELECT pg_backend_pid()")
    await asyncio.sleep(1.1)
    after = await via_connection(db, "SELECT pg_backend_pid()")
    assert after != before
    assert await server_pids(pg, db, scratch_database, 1) == [after]


async def test_a_connection_out_while_the_engine_is_disposed_goes_back_to_the_pool_it_came_from(db: Database) -> None:
    async with db.connection() as conn:
        before = db.pool
        await db.dispose()  # a new, empty pool from now on
        assert await conn.fetchval("SELECT 1") == 1
    assert db.pool is not before
    assert (db.pool.checkedin(), before.checkedin()) == (0, 1)


async def test_a_connection_discarded_while_its_task_is_cancelled_still_goes_back_to_the_pool(db: Database) -> None:
    inside = asyncio.Event()

    async def left_in_a_transaction() -> None:
        async with db.connection() as conn:
            await conn.execute("BEGIN")  # a transaction left open: the connection is closed on the way out
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(left_in_a_transaction())
    await inside.wait()
    task.cancel()  # out of the block: its connection is being closed...
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()  # ...when a second cancellation arrives
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.pool_stats().checked_out == 0
    assert await via_connection(db, "SELECT 1") == 1


async def test_an_overflow_connection_given_back_to_a_full_pool_is_closed(
    make_db: Callable[..., Database], pg: Any, scratch_database: str
) -> None:
    db = make_db(db_pool_size=1, db_max_overflow=1)
    async with db.connection() as first, db.connection() as second:
        pids = {await first.fetchval("SELECT pg_backend_pid()"), await second.fetchval("SELECT pg_backend_pid()")}
        assert len(pids) == 2
        assert db.pool_stats().checked_out == 2
    stats = db.pool_stats()
    assert (stats.checked_out, stats.checked_in, stats.overflow) == (0, 1, 0)
    kept = await server_pids(pg, db, scratch_database, 1)
    assert len(kept) == 1
    assert kept[0] in pids


# -- isolated(): the test kit's per-test rollback --------------------------------------------------------------------


async def test_isolated_rolls_back_everything_every_way_wrote(db: Database, scratch: Any) -> None:
    async with db.isolated():
        async with db.session() as session:
            await session.execute(text("INSERT INTO items (id, name) VALUES (30, 'session')"))
        async with db.connection() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES (31, 'connection')")
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES (32, 'transaction')")
        await db.run(lambda conn: conn.execute("INSERT INTO items (id, name) VALUES (33, 'run')"))
        pids = {await way(db, "SELECT pg_backend_pid()") for way in WAYS.values()}
        assert len(pids) == 1  # one connection for all
        assert await via_connection(db, "SELECT count(*) FROM items") == 5  # each sees the others' rows
        assert await scratch.fetchval("SELECT count(*) FROM items") == 1  # nobody else does
    assert await scratch.fetchval("SELECT count(*) FROM items") == 1
    assert db.pool_stats().checked_out == 0


@pytest.mark.parametrize("way", WAYS.values(), ids=WAYS.keys())
async def test_isolated_keeps_a_failed_unit_from_aborting_the_test(
    db: Database, way: Callable[[Database, str], Awaitable[Any]]
) -> None:
    async with db.isolated():
        await via_transaction(db, "INSERT INTO items (id, name) VALUES (40, 'kept') RETURNING id")
        with pytest.raises(Conflict):
            await way(db, "INSERT INTO items (id, name) VALUES (1, 'duplicate') RETURNING id")
        assert await via_connection(db, "SELECT count(*) FROM items") == 2


async def test_isolated_rolls_back_a_unit_whose_block_raises(db: Database) -> None:
    async def in_session() -> None:
        async with db.session() as session:
            await session.execute(text("INSERT INTO items (id, name) VALUES (50, 'undone')"))
            raise ValueError("undo")

    async def in_transaction() -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES (51, 'undone')")
            raise ValueError("undo")

    async with db.isolated():
        for unit in (in_session, in_transaction):
            with pytest.raises(ValueError, match="undo"):
                await unit()
        assert await via_connection(db, "SELECT count(*) FROM items") == 1


@pytest.mark.parametrize("way", ["session", "transaction"])
async def test_isolated_settings_end_with_their_unit(db: Database, way: str) -> None:
    async with db.isolated():
        if way == "session":
            async with db.session(tenant="a") as session:
                assert (await session.execute(text("SELECT current_setting('app.tenant')"))).scalar_one() == "a"
        else:
            async with db.transaction(tenant="a") as conn:
                assert await conn.fetchval("SELECT current_setting('app.tenant')") == "a"
        assert await via_connection(db, "SELECT current_setting('app.tenant', true)") in ("", None)


async def test_isolated_serialises_concurrent_tasks_on_its_one_connection(db: Database) -> None:
    async def insert(n: int) -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES ($1, 'concurrent')", 100 + n)
            await asyncio.sleep(0)  # let the others try to get in
            assert await conn.fetchval("SELECT count(*) FROM items WHERE id = $1", 100 + n) == 1

    async with db.isolated():
        await asyncio.gather(*(insert(n) for n in range(20)))
        assert await via_connection(db, "SELECT count(*) FROM items") == 21


async def test_isolated_names_a_deadlock_between_tasks(make_db: Callable[..., Database]) -> None:
    db = make_db(db_pool_timeout=0.2)
    async with db.isolated():
        with pytest.raises(RuntimeError, match="one at a time"):
            async with db.connection():
                await asyncio.create_task(via_connection(db, "SELECT 1"))


async def test_isolated_is_not_nestable(db: Database) -> None:
    async with db.isolated():
        with pytest.raises(RuntimeError, match="already active"):
            async with db.isolated():
                pass
