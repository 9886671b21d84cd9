"""The database: one SQLAlchemy `AsyncEngine` on asyncpg, and the ways handlers reach it.

- `Database.session()`: the ORM, one `AsyncSession` per unit of work in one transaction.
- `Database.connection()`: the fast path, the pool's own asyncpg connection in autocommit (one round
  trip per statement); `Database.transaction()` the same inside BEGIN ... COMMIT. Both take connections
  through the pool's lane (`svc.pool`), not SQLAlchemy's checkout.
- `Database.run()` / `Database.run_session()`: a unit of work as a function, re-run on a serialization
  failure or deadlock when asked to.
- `Database.isolated()`: every use of this `Database` on one connection, rolled back at the end (tests).

Driver errors are mapped to problems at one boundary, `database_error()`, whichever way they came.
Importing this module imports SQLAlchemy's core, not its ORM: `sqlalchemy.ext.asyncio` (which imports
the ORM) is imported when the application first uses `engine` or `session()`. A service that only
answers health checks, or uses only the fast path, never loads the ORM.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import asyncpg
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.util import greenlet_spawn

from svc.dblog import log_slow_statement
from svc.errors import (
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    FieldError,
    ServiceError,
    ServiceUnavailable,
    UnprocessableContent,
)
from svc.pool import Pool
from svc.postgres import Purpose, driver_error, engine_arguments
from svc.settings import Settings
from svc.tracing import statement_span

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["Connection", "Database", "Isolation", "PoolStats", "database_error", "is_retryable", "is_unavailable"]

T = TypeVar("T")
#: Transaction isolation levels `transaction()`, `session()` and `run()` accept (asyncpg's spelling).
Isolation = Literal["read_committed", "repeatable_read", "serializable"]
_SQLALCHEMY_ISOLATION = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}

_SETTING_PREFIX = "app."
# SQLSTATEs (PostgreSQL's appendix A) and what they mean to a client.
_CONFLICTS = {"23505", "23503", "23P01"}  # unique, foreign key, exclusion
_NOT_NULL, _CHECK = "23502", "23514"
_RETRYABLE = {"40001", "40P01"}  # serialization failure, deadlock detected
# A schema identifier as PostgreSQL reports it in an error's fields (never the row's values).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# Anything the driver, SQLAlchemy or the network may raise; `database_error` sorts them.
# EmulatedDBAPIException: the asyncpg adapter's error for a failed connect, raised as is by a pool checkout.
_DRIVER_ERRORS = (
    sa_exc.SQLAlchemyError,
    sa_exc.EmulatedDBAPIException,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# Backoff before re-running work: BASE * 2**attempt seconds (at most MAX), times a random 0.5-1.5.
_BACKOFF_BASE, _BACKOFF_MAX = 0.01, 0.2


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool's own counters."""

    size: int
    checked_in: int
    checked_out: int
    overflow: int
    max_overflow: int

    @property
    def usage(self) -> float:
        """Checked-out connections as a fraction of everything the pool may open."""
        return self.checked_out / max(1, self.size + self.max_overflow)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached or did not answer in time."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    exc = driver_error(exc)
    return isinstance(
        exc,
        (
            sa_exc.TimeoutError,  # pool checkout
            TimeoutError,
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError,
            asyncpg.QueryCanceledError,
            asyncpg.TooManyConnectionsError,
            asyncpg.AdminShutdownError,
        ),
    )


def _sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, ServiceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    state = getattr(driver_error(exc), "sqlstate", None)
    return state if isinstance(state, str) else None


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` (a driver error, or the problem `database_error` made of one) is a serialization
    failure or a deadlock: the transaction was rolled back and running it again may succeed."""
    return _sqlstate(exc) in _RETRYABLE


def _identifier(value: object) -> str | None:
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def database_error(exc: BaseException) -> ServiceError:
    """The problem a database error becomes, for every way of reaching the database (raise it `from exc`).

    - unreachable, timed out, cancelled, pool exhausted: `DatabaseUnavailable` (503);
    - unique, foreign-key and exclusion violations: `Conflict` (409);
    - not-null and check violations: `UnprocessableContent` (422) whose one `errors` entry names the
      column or constraint (schema names only: never the row's values nor the driver's message);
    - serialization failures and deadlocks (when not retried): `ServiceUnavailable` (503, `Retry-After: 1`);
    - anything else: `DatabaseError` (500).

    The driver's text is never part of the problem; it stays on `__cause__` for the log.
    """
    if is_unavailable(exc):
        return DatabaseUnavailable()
    state = _sqlstate(exc)
    if state in _CONFLICTS:
        return Conflict()
    if state in (_NOT_NULL, _CHECK):
        driver = driver_error(exc)
        if state == _NOT_NULL:
            column = _identifier(getattr(driver, "column_name", None))
            detail = f"A value is required for {column}." if column else "A required value is missing."
        else:
            constraint = _identifier(getattr(driver, "constraint_name", None))
            detail = f"A value violates the constraint {constraint}." if constraint else "A value is not allowed."
        return UnprocessableContent([FieldError(detail=detail)])
    if state in _RETRYABLE:
        return ServiceUnavailable(
            "The request conflicted with concurrent requests. Try again.", headers={"Retry-After": "1"}
        )
    return DatabaseError()


def _setting_names(settings: Mapping[str, str]) -> list[str]:
    for name in settings:
        if not name.isidentifier():
            raise ValueError(f"Invalid setting name: {name!r}")
    return [_SETTING_PREFIX + name for name in settings]


def _set_config_statement(count: int) -> str:
    """One statement setting `count` transaction-local settings from parameters ($1 name, $2 value, ...)."""
    return "SELECT " + ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, true)" for i in range(count))


class Connection:
    """The fast path: the pool's asyncpg connection for hot queries, with the slow-statement log.

    Queries are asyncpg's: `$1`-style placeholders, `asyncpg.Record` rows. Each method is one round
    trip on a warm statement cache. Statements are bounded by `DB_COMMAND_TIMEOUT` (a shorter bound:
    `asyncio.timeout`, which cancels the statement on the server). Errors leave the `async with` block
    that made the connection as problems (`database_error`); inside it they are asyncpg's own, to
    catch if a handler must.
    """

    __slots__ = ("_driver", "_savepoints", "_threshold")

    def __init__(self, driver: asyncpg.Connection, threshold_s: float, *, savepoints: bool = False) -> None:
        self._driver = driver
        self._threshold = threshold_s
        # Isolated (pinned) mode emulates autocommit inside the test's transaction: each statement in a savepoint.
        self._savepoints = savepoints

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """All rows."""
        rows: list[asyncpg.Record] = await self._run(self._driver.fetch, query, args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """The first row, or None."""
        return await self._run(self._driver.fetchrow, query, args)

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        """One value of the first row (None without a row)."""
        return await self._run(self._driver.fetchval, query, args, column=column)

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; its status (`INSERT 0 1`). Without arguments, several `;`-separated statements."""
        status: str = await self._run(self._driver.execute, query, args)
        return status

    async def executemany(self, command: str, args: Iterable[Sequence[Any]]) -> None:
        """Run `command` once per argument tuple, pipelined (atomic: all or none, even in autocommit)."""
        await self._run(self._driver.executemany, command, (args,))

    async def _run(
        self, method: Callable[..., Awaitable[Any]], query: str, args: tuple[Any, ...], **kwargs: Any
    ) -> Any:
        span = statement_span(query)  # None unless the request's span is recorded
        start = time.perf_counter()
        try:
            if self._savepoints:
                async with self._driver.transaction():
                    result = await method(query, *args, **kwargs)
            else:
                result = await method(query, *args, **kwargs)
        except BaseException as exc:
            if (elapsed := time.perf_counter() - start) >= self._threshold:
                log_slow_statement(query, elapsed, failed=True)
            if span is not None:
                span.failed(exc)
                span.end()
            raise
        if (elapsed := time.perf_counter() - start) >= self._threshold:
            log_slow_statement(query, elapsed, failed=False)
        if span is not None:
            span.end()
        return result


class _Pinned:
    """Isolated mode's one connection, in its outer transaction, used by one task's blocks at a time."""

    def __init__(self, connection: AsyncConnection, driver: asyncpg.Connection, wait: float) -> None:
        self.connection = connection
        self.driver = driver
        self.wait = wait
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        """Hold the connection for the current task; nested blocks of the same task go straight in."""
        task = asyncio.current_task()
        if self.owner is task:
            yield
            return
        try:
            async with asyncio.timeout(self.wait):
                await self.lock.acquire()
        except TimeoutError:
            raise RuntimeError(
                f"Database.isolated(): another task has held the one connection for {self.wait} s. Concurrent "
                "tasks' database blocks run one at a time in isolated mode: a block that waits for another "
                "task's block never ends."
            ) from None
        self.owner = task
        try:
            yield
        finally:
            self.owner = None
            self.lock.release()

    async def settings_saved(self, names: list[str]) -> list[str]:
        """The current values of `names` (empty when unset): what a savepoint's settings are restored to."""
        if not names:
            return []
        row = await self.driver.fetchrow(
            "SELECT " + ", ".join(f"coalesce(current_setting(${i + 1}, true), '')" for i in range(len(names))), *names
        )
        return list(row)


class Database:
    """Owns the engine and its pool for one application instance; created and disposed by the lifespan.

    Handlers get it with `request.app.runtime.database()`, and use one of:

    ORM, one unit of work::

        async with db.session(tenant="42") as session:
            session.add(Note(title=title))

    Fast path (the pool's asyncpg connection; autocommit: a read is one round trip)::

        async with db.connection() as conn:
            row = await conn.fetchrow("SELECT id, title FROM notes WHERE id = $1", note_id)

    Fast path in a transaction, or work re-run on a serialization failure or deadlock::

        async with db.transaction(tenant="42") as conn:
            await conn.execute("UPDATE notes SET title = $2 WHERE id = $1", note_id, title)

        async def move(conn: Connection) -> None: ...
        await db.run(move, retries=3, isolation="serializable")

    Keywords of `session`, `transaction` and `run` become transaction-local settings `app.<name>`
    for row-level-security policies (`current_setting('app.tenant')`); `isolation` and `retries` are
    not settings. Every way shares the pool (`pool_stats()` counts them all), the slow-statement log
    (`svc.db.slow`) and the error mapping (`database_error`): errors leave each block as problems,
    never with the driver's text.

    Connections are not pinged on checkout (a round trip each): one the server has closed is
    replaced at checkout when the driver has seen it close, or else when its BEGIN fails (re-sent
    once on a new connection; BEGIN has no effect to repeat). A statement on a connection that dies
    under it fails with 503 (in a transaction, `run(retries=...)` re-runs the work). `DB_POOL_RECYCLE`
    retires old connections, and the health probe reports an outage.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        engine_url, connect_args = engine_arguments(url, settings, Purpose.POOL)
        # What create_async_engine() builds and wraps (asyncpg has one dialect, async): the wrapper comes later.
        self.sync_engine: Engine = create_engine(
            engine_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
            pool_recycle=settings.db_pool_recycle,
            poolclass=Pool,
            hide_parameters=True,
            connect_args=connect_args,
        )
        event.listen(self.sync_engine.pool, "checkout", _check_out_open)
        self._slow_s = settings.db_slow_query_ms / 1000
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._pinned: _Pinned | None = None

    @property
    def pool(self) -> Pool:
        """The engine's pool (a new one after `dispose()`): its lane serves the fast path."""
        return cast(Pool, self.sync_engine.pool)

    @property
    def engine(self) -> AsyncEngine:
        """The `AsyncEngine` (made on first use: it imports SQLAlchemy's asyncio extension and ORM)."""
        if self._engine is None:
            from sqlalchemy.ext.asyncio import AsyncEngine

            self._engine = AsyncEngine(self.sync_engine)
        return self._engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self._sessionmaker is None:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            self._sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        return self._sessionmaker

    def pool_stats(self) -> PoolStats:
        pool: Any = self.sync_engine.pool
        return PoolStats(
            size=pool.size(),
            checked_in=pool.checkedin(),
            checked_out=pool.checkedout(),
            overflow=max(0, pool.overflow()),
            max_overflow=self.settings.db_max_overflow,
        )

    # -- the ORM ---------------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def session(
        self, *, isolation: Isolation | None = None, autocommit: bool = False, **settings: str
    ) -> AsyncIterator[AsyncSession]:
        """An `AsyncSession` in one transaction: committed when the block ends, rolled back if it raises.

        Round trips: BEGIN (plus one statement for all `settings`), the block's, COMMIT. With
        `autocommit`, each statement is its own transaction and there is no BEGIN or COMMIT: for
        reads that need no consistency between their statements (a single `get`), one round trip
        each; settings need a transaction, so they cannot be given then. Errors leave as problems
        (`database_error`).
        """
        names = _setting_names(settings)
        if autocommit and (names or isolation):
            raise ValueError("An autocommit session has no transaction: no settings, no isolation level")
        if autocommit and self._pinned is None:
            async with self._autocommit_session() as session:
                yield session
            return
        try:
            if self._pinned is not None:
                async with self._pinned_session(names, settings, isolation) as session:
                    yield session
                return
            session, conn = await self._begun_session(isolation)
            try:
                if names:
                    await conn.execute(_set_config_statement(len(names)), *_pairs(names, settings.values()))
                yield session
                await session.commit()
            except BaseException:
                await _quietly(session.rollback())
                raise
            finally:
                await session.close()
        except _DRIVER_ERRORS as exc:
            raise database_error(exc) from exc

    @asynccontextmanager
    async def _autocommit_session(self) -> AsyncIterator[AsyncSession]:
        try:
            session = self.sessionmaker()
            try:
                await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                yield session
                if session.new or session.dirty or session.deleted:
                    await session.commit()  # the ORM's flush: each statement commits on its own on the server
            finally:
                await session.close()
        except _DRIVER_ERRORS as exc:
            raise database_error(exc) from exc

    async def _begun_session(self, isolation: Isolation | None) -> tuple[AsyncSession, Connection]:
        """A session whose connection has sent BEGIN, and that connection's fast path (for the settings).

        SQLAlchemy's asyncpg adapter would send BEGIN before the first statement, inside the caller's
        block; sent here, a connection found dead is replaced (once) before the block runs.
        """
        options = {"isolation_level": _SQLALCHEMY_ISOLATION[isolation]} if isolation else {}
        for attempt in range(2):
            session = self.sessionmaker()
            driver = None
            try:
                connection = await session.connection(execution_options=options)
                raw = await connection.get_raw_connection()
                driver = raw.driver_connection
                adapter: Any = raw.dbapi_connection
                await adapter._start_transaction()
            except BaseException as exc:
                lost = driver is not None and _lost(driver, exc)
                await (session.invalidate() if lost else session.close())
                if attempt or not lost or not isinstance(exc, Exception):
                    raise
                continue
            return session, Connection(driver, self._slow_s)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _pinned_session(
        self, names: list[str], settings: Mapping[str, str], isolation: Isolation | None
    ) -> AsyncIterator[AsyncSession]:
        from sqlalchemy.ext.asyncio import AsyncSession

        pinned = self._require_pinned()
        async with pinned.use():
            # A savepoint in the test's transaction; settings restored as the end of a real transaction would.
            session = AsyncSession(
                bind=pinned.connection, join_transaction_mode="create_savepoint", expire_on_commit=False
            )
            try:
                async with session.begin():
                    saved = await pinned.settings_saved(names)
                    if names:
                        await Connection(pinned.driver, self._slow_s).execute(
                            _set_config_statement(len(names)), *_pairs(names, settings.values())
                        )
                    yield session
                    await session.flush()  # before the settings go: row-level security checks the rows against them
                    if names:
                        await pinned.driver.execute(_set_config_statement(len(names)), *_pairs(names, saved))
            finally:
                await session.close()

    async def run_session(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        retries: int = 0,
        isolation: Isolation | None = None,
        **settings: str,
    ) -> T:
        """`await work(session)` in `session(...)`, awaited again (after a short backoff) up to `retries` times
        when the transaction fails with a serialization failure or deadlock; then its 503 problem.

        `work` must have no effect outside the transaction: each attempt starts from scratch.
        """
        return await self._with_retries(
            lambda: self.session(isolation=isolation, autocommit=False, **settings), work, retries
        )

    # -- the fast path -----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """The fast path: a pooled connection in autocommit, each statement its own transaction (no BEGIN/COMMIT).

        On a healthy pool a read is one round trip. Driver errors leave the block as problems
        (`database_error`). Checking the connection in costs no round trip when the block left no
        transaction open; one that did, or that broke, is closed instead of reused.
        """
        try:
            if self._pinned is not None:
                pinned = self._pinned
                async with pinned.use():
                    yield Connection(pinned.driver, self._slow_s, savepoints=True)
                return
            # The pool's lane: no greenlet, proxy, events or reset (nothing to reset: no transaction is left open).
            pool = self.pool  # the one it came from, even if the engine is disposed meanwhile
            driver, entry = await pool.take()
            try:
                yield Connection(driver, self._slow_s)
            finally:
                await pool.give_back(entry)
        except _DRIVER_ERRORS as exc:
            raise database_error(exc) from exc

    @asynccontextmanager
    async def transaction(self, *, isolation: Isolation | None = None, **settings: str) -> AsyncIterator[Connection]:
        """The fast path in one transaction: BEGIN (plus one statement for all `settings`), the block, COMMIT;
        rolled back if the block raises. Settings are transaction-local `app.<name>`, as in `session()`."""
        names = _setting_names(settings)
        try:
            if self._pinned is not None:
                async with self._pinned_transaction(names, settings, isolation) as conn:
                    yield conn
                return
            pool = self.pool
            driver, entry, transaction = await self._begun(pool, isolation)
            conn = Connection(driver, self._slow_s)
            try:
                if names:
                    await conn.execute(_set_config_statement(len(names)), *_pairs(names, settings.values()))
                yield conn
            except BaseException:
                await _quietly(transaction.rollback())
                raise
            else:
                await transaction.commit()
            finally:
                await pool.give_back(entry)
        except _DRIVER_ERRORS as exc:
            raise database_error(exc) from exc

    @staticmethod
    async def _begun(pool: Pool, isolation: Isolation | None) -> tuple[asyncpg.Connection, ConnectionPoolEntry, Any]:
        """A connection from `pool`'s lane, its entry and its asyncpg transaction, BEGIN sent; a connection
        found dead then is replaced, once."""
        for attempt in range(2):
            driver, entry = await pool.take()
            try:
                transaction = driver.transaction(isolation=isolation)
                await transaction.start()
            except BaseException as exc:
                lost = _lost(driver, exc)
                # Whatever BEGIN left (asyncpg keeps a failed one as the connection's transaction) goes with it.
                await pool.give_back(entry, discard=True)
                if attempt or not lost or not isinstance(exc, Exception):
                    raise
                continue
            return driver, entry, transaction
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _pinned_transaction(
        self, names: list[str], settings: Mapping[str, str], isolation: Isolation | None
    ) -> AsyncIterator[Connection]:
        pinned = self._require_pinned()
        async with pinned.use(), pinned.driver.transaction():  # nested: a savepoint
            conn = Connection(pinned.driver, self._slow_s)
            saved = await pinned.settings_saved(names)
            if names:
                await conn.execute(_set_config_statement(len(names)), *_pairs(names, settings.values()))
            yield conn
            if names:
                await pinned.driver.execute(_set_config_statement(len(names)), *_pairs(names, saved))

    async def run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        retries: int = 0,
        isolation: Isolation | None = None,
        **settings: str,
    ) -> T:
        """`await work(conn)` in `transaction(...)`, awaited again (after a short backoff) up to `retries` times
        when the transaction fails with a serialization failure or deadlock; then its 503 problem.

        `work` must have no effect outside the transaction: each attempt starts from scratch.
        """
        return await self._with_retries(lambda: self.transaction(isolation=isolation, **settings), work, retries)

    async def _with_retries(self, begin: Callable[[], Any], work: Callable[[Any], Awaitable[T]], retries: int) -> T:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        attempt = 0
        while True:
            try:
                async with begin() as handle:
                    return await work(handle)
            except ServiceError as exc:
                if attempt >= retries or not is_retryable(exc):
                    raise
            await asyncio.sleep(min(_BACKOFF_MAX, _BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            attempt += 1

    # -- isolation for tests -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def isolated(self) -> AsyncIterator[None]:
        """For tests: every `session()`, `connection()`, `transaction()` and `run()` of this `Database` uses one
        connection inside an outer transaction that is rolled back on exit, so a test leaves no rows behind.

        Inside, a session or transaction is a savepoint (released or rolled back as the real one would be
        committed or rolled back, its settings undone at its end), and each `connection()` statement runs
        in a savepoint of its own (so a failed one leaves the others, as autocommit does). Blocks of
        concurrent tasks take turns on the connection; a task waiting longer than `DB_POOL_TIMEOUT`
        raises RuntimeError (a block that awaits another task's database block deadlocks). `isolation` is
        the outer transaction's (a savepoint has none of its own). Not nestable.
        """
        if self._pinned is not None:
            raise RuntimeError("Database.isolated() is already active on this Database")
        connection = await self.engine.connect()
        try:
            await connection.begin()
            raw = await connection.get_raw_connection()
            adapter: Any = raw.dbapi_connection
            await adapter._start_transaction()  # BEGIN now: fast-path statements may come before any ORM one
            self._pinned = _Pinned(connection, raw.driver_connection, self.settings.db_pool_timeout)
            try:
                yield
            finally:
                self._pinned = None
                await connection.rollback()
        finally:
            await connection.close()

    def _require_pinned(self) -> _Pinned:
        pinned = self._pinned
        if pinned is None:
            raise RuntimeError("Database.isolated() ended during the block")
        return pinned

    async def dispose(self) -> None:
        """Close the pool's connections (closing one awaits the driver: done in SQLAlchemy's greenlet)."""
        await greenlet_spawn(self.sync_engine.dispose)


def _pairs(names: list[str], values: Iterable[str]) -> list[str]:
    return [item for pair in zip(names, values, strict=True) for item in pair]


def _lost(driver: asyncpg.Connection, exc: BaseException) -> bool:
    """Whether `exc` says `driver`'s connection is gone (the server may have said so before closing it)."""
    return bool(driver.is_closed()) or isinstance(
        driver_error(exc),
        (OSError, asyncpg.PostgresConnectionError, asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError),
    )


def _check_out_open(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool checkout: a connection whose server end has closed (server restart, `pg_terminate_backend`, idle
    timeout) is replaced, without a round trip: asyncpg has seen the socket close."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa_exc.DisconnectionError("The server closed this pooled connection.")


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Await a rollback whose failure matters less than the error being raised (the connection is then discarded)."""
    with contextlib.suppress(Exception):
        await awaitable
