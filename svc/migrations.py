"""Alembic as the service uses it: its configuration, upgrades from code, and the advisory lock migrators share.

What the command line (`python -m svc migrate`, `alembic`) and test fixtures need; the serving
process never imports it (readiness's schema check is `svc.schema`). The configuration is found
from the package's location (`alembic.ini` and `migrations/` next to `svc/`), so nothing depends
on the working directory. Importing this module imports neither alembic nor SQLAlchemy: the
functions that need them import them when called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from svc.postgres import Purpose, database_url, driver_error, engine_arguments
from svc.probe import describe_failure
from svc.schema import SCRIPT_LOCATION, VERSION_TABLE_QUERY, VERSIONS_QUERY, Scripts
from svc.service import load_service
from svc.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "ALEMBIC_INI",
    "LockTimeout",
    "Upgrade",
    "alembic_config",
    "configure_cli_logging",
    "connect",
    "describe_error",
    "lock",
    "lock_timeout_off",
    "prepare_session",
    "read_scripts",
    "run_blocking",
    "run_bounded",
    "timeout_statements",
    "upgrade",
    "upgrade_async",
]

ALEMBIC_INI = SCRIPT_LOCATION.parent / "alembic.ini"
# Key of the session-level advisory lock that serialises migrators (replicas, CLI, code).
LOCK_KEY = int.from_bytes(b"svc:migr")
# SQLSTATE lock_not_available: what PostgreSQL reports when lock_timeout expires.
LOCK_NOT_AVAILABLE = "55P03"
# Waits between attempts after a lock timeout: 0.5 s, doubling, at most this.
RETRY_DELAY_MAX = 8.0

T = TypeVar("T")
logger = logging.getLogger("svc.migrations")


def configure_cli_logging(settings: Settings) -> None:
    """The service's logging for `alembic` and `python -m svc migrate`, minus alembic's start-up chatter."""
    from svc.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    _quiet_alembic()


def _quiet_alembic() -> None:
    # Alembic announces each of its plugins at INFO whenever it loads.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _ini_value(value: str) -> str:
    return value.replace("%", "%%")  # the ini parser interpolates %


def alembic_config(settings: Settings | None = None, *, version_locations: Iterable[Path] = ()) -> Config:
    """The service's alembic configuration, independent of the working directory.

    `settings` choose the database (None: read from the environment when env.py runs);
    `version_locations` adds directories of revision scripts to `migrations/versions`, and so does
    the service that `settings.service` names (its models' metadata becomes autogenerate's target).
    """
    _quiet_alembic()
    from alembic.config import Config

    cfg = Config(ALEMBIC_INI if ALEMBIC_INI.is_file() else None)
    cfg.set_main_option("script_location", _ini_value(str(SCRIPT_LOCATION)))
    cfg.set_main_option("path_separator", "os")
    extra = [str(path) for path in version_locations]
    if settings is not None and settings.service is not None:
        service = load_service(settings.service)
        if service.migrations is not None:
            extra.append(str(service.migrations))
        cfg.attributes["metadata"] = service.metadata
    if extra:
        locations = os.pathsep.join([str(SCRIPT_LOCATION / "versions"), *extra])
        cfg.set_main_option("version_locations", _ini_value(locations))
    cfg.attributes["settings"] = settings
    # Called from code, the caller's logging stays as it is.
    cfg.attributes["configure_logging"] = False
    return cfg


def read_scripts(cfg: Config | None = None) -> Scripts:
    """Read the revision scripts (imports alembic and every script: blocking, run it in a thread)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg or alembic_config())
    return Scripts(tuple(sorted(script.get_heads())), frozenset(rev.revision for rev in script.walk_revisions()))


def _revisions(connection: Connection) -> tuple[str, ...]:
    """`svc.schema.database_revisions` on a SQLAlchemy connection (inside alembic's transaction)."""
    from sqlalchemy import text

    if connection.execute(text(VERSION_TABLE_QUERY)).scalar() is None:
        return ()
    return tuple(sorted(connection.execute(text(VERSIONS_QUERY)).scalars()))


def lock(connection: Connection) -> None:
    """Wait for other migrators (replicas, `alembic`, `python -m svc migrate`), however long they take.

    A session-level lock, held until the connection closes: revisions commit one by one, and an
    index built `CONCURRENTLY` commits in the middle of one, while the run stays serialised.
    """
    from sqlalchemy import text

    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})


def _milliseconds(seconds: float) -> str:
    return f"'{round(seconds * 1000)}ms'"


def timeout_statements(settings: Settings) -> tuple[str, str]:
    """The `SET`s that bound a migration's session: MIGRATION_LOCK_TIMEOUT and MIGRATION_STATEMENT_TIMEOUT.

    Session-level, not `SET LOCAL`: they outlive each revision's transaction and autocommit blocks.
    statement_timeout is set even when 0, so a role's or database's own setting cannot cut a long
    index build short.
    """
    return (
        f"SET lock_timeout = {_milliseconds(settings.migration_lock_timeout)}",
        f"SET statement_timeout = {_milliseconds(settings.migration_statement_timeout)}",
    )


@contextmanager
def lock_timeout_off() -> Iterator[None]:
    """In a revision: statements inside wait for their locks as long as they must; the lock timeout applies after.

    For statements whose wait blocks nobody and which a timeout would leave half done: `CREATE
    INDEX CONCURRENTLY` waits for every older transaction (SHARE UPDATE EXCLUSIVE, which reads and
    writes do not queue behind) and, cancelled, leaves an INVALID index behind. Use it inside
    `op.get_context().autocommit_block()`, where a `SET` is not undone by a transaction's end.
    """
    from alembic import op

    op.execute("SET lock_timeout = 0")
    yield
    config = op.get_context().config
    settings = config.attributes.get("settings") if config is not None else None
    if settings is None:  # alembic's own command line before env.py has read the settings: cannot happen
        raise RuntimeError("lock_timeout_off() runs only in svc's migrations (env.py)")
    op.execute(timeout_statements(settings)[0])


@dataclass(frozen=True, slots=True)
class Blocked:
    """What a waiting migration was seen waiting for, and the session it waited behind."""

    locktype: str
    mode: str
    relation: str | None
    pid: int
    state: str | None
    seconds: float | None

    def describe(self) -> str:
        """E.g. "an ACCESS EXCLUSIVE lock on notes, held by another session (pid 123, idle in transaction for 40 s)"."""
        mode = " ".join(re.findall(r"[A-Z][a-z]+", self.mode.removesuffix("Lock"))).upper()
        if self.relation is not None:
            what = f"an {mode} lock on {self.relation}" if mode[0] in "AEIOU" else f"a {mode} lock on {self.relation}"
        elif self.locktype == "transactionid":
            what = "a row lock (rows another transaction has changed or locked)"
        else:
            what = f"a {self.locktype} lock ({mode})"
        state = self.state or "state unknown"
        since = f" for {_duration(self.seconds)}" if self.seconds is not None else ""
        return f"{what}, held by another session (pid {self.pid}, {state}{since})"


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)} ms" if seconds < 1 else f"{seconds:.0f} s"


# The session a waiting backend waits behind, the oldest transaction first (most often the cause).
_BLOCKED_QUERY = """
SELECT w.locktype, w.mode, w.relation::regclass::text AS relation, b.pid, b.state,
       extract(epoch FROM now() - b.state_change)::float8 AS seconds
FROM pg_locks w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
WHERE w.pid = :pid AND NOT w.granted
ORDER BY b.xact_start NULLS LAST
LIMIT 1
"""


@asynccontextmanager
async def _watch_lock_waits(conn: AsyncConnection, pid: int, every: float) -> AsyncIterator[list[Blocked]]:
    """While inside, look every `every` seconds at what backend `pid` waits for; yields the sightings so far.

    Once lock_timeout fires the wait is gone, so what blocked it must be seen while it lasts; on
    a connection of its own, in autocommit (the watcher holds no snapshot and no lock).
    """
    from sqlalchemy import text

    seen: list[Blocked] = []
    async with conn.engine.connect() as watcher:  # connected before the migration can wait
        await watcher.execution_options(isolation_level="AUTOCOMMIT")

        async def watch() -> None:
            while True:
                row = (await watcher.execute(text(_BLOCKED_QUERY), {"pid": pid})).first()
                if row is not None:
                    seen[:] = [Blocked(*row)]
                await asyncio.sleep(every)

        task = asyncio.create_task(watch())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class LockTimeout(Exception):
    """A migration waited longer than MIGRATION_LOCK_TIMEOUT for a lock, on every attempt; the text says which lock."""


def _is_lock_timeout(exc: BaseException) -> bool:
    cause = driver_error(exc)
    return isinstance(cause, asyncpg.PostgresError) and cause.sqlstate == LOCK_NOT_AVAILABLE


def _failed_revision(exc: BaseException) -> str | None:
    """The revision whose `upgrade()`/`downgrade()` raised `exc`: its module is on the traceback, `revision` in it."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        names = frame.f_globals
        if frame.f_code.co_name in ("upgrade", "downgrade") and "down_revision" in names:
            revision = names.get("revision")
            return revision if isinstance(revision, str) else None
    return None


async def prepare_session(conn: AsyncConnection, settings: Settings) -> None:
    """Make `conn` a migration's session: wait for the advisory lock, then set the timeouts (committed).

    The advisory lock is taken first and without a time limit: a second migrator waits for the
    first to finish (which blocks no query), and lock_timeout would otherwise cut that wait short.
    """
    await conn.run_sync(lock)
    for statement in timeout_statements(settings):
        await conn.exec_driver_sql(statement)
    await conn.commit()


async def run_bounded(conn: AsyncConnection, settings: Settings, run: Callable[[Connection], T]) -> T:
    """`run(connection)` (alembic running revisions) on a `prepare_session` connection; lock timeouts retried.

    When a statement waits longer than MIGRATION_LOCK_TIMEOUT for a lock (SQLSTATE 55P03), the
    revision it belongs to is rolled back (each revision is a transaction of its own: those before
    it stay applied) and `run` starts again after 0.5 s, 1 s, 2 s... (at most 8 s), up to
    MIGRATION_LOCK_RETRIES more times; then `LockTimeout` names the revision, the lock and the
    session holding it. Every other error is raised as it is.
    """
    pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
    await conn.commit()
    timeout = settings.migration_lock_timeout
    attempts = settings.migration_lock_retries + 1
    # One watcher for every attempt: its connection is open before the first wait, and the last sighting stays
    # known when a later wait ends before the watcher looked.
    async with _watch_lock_waits(conn, pid, every=min(max(timeout / 4, 0.01), 0.5)) as seen:
        for attempt in range(1, attempts + 1):
            try:
                return await conn.run_sync(run)
            except Exception as exc:
                if not _is_lock_timeout(exc):
                    raise
                await conn.rollback()
                revision = _failed_revision(exc)
                lock = seen[0].describe() if seen else "a lock (the session holding it was not seen in time)"
                message = (
                    f"migration {revision or '(revision unknown)'} waited more than {_duration(timeout)} for {lock}"
                )
                if attempt == attempts:
                    tries = f" (tried {attempts} times)" if attempts > 1 else ""
                    raise LockTimeout(f"{message}{tries}.") from exc
            delay = min(0.5 * 2 ** (attempt - 1), RETRY_DELAY_MAX)
            logger.warning(
                "Migration lock timeout, trying again",
                extra={"detail": message, "attempt": attempt, "attempts": attempts, "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[AsyncConnection]:
    """A connection for migrations to the settings' database (`svc.postgres.database_url`: the
    embedded PostgreSQL without DATABASE_URL in development/test), closed on exit."""
    from sqlalchemy import NullPool
    from sqlalchemy.ext.asyncio import create_async_engine

    async with database_url(settings) as url:
        engine_url, connect_args = engine_arguments(url, settings, Purpose.MIGRATE)
        engine = create_async_engine(engine_url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)
        try:
            async with engine.connect() as conn:
                yield conn
        finally:
            await engine.dispose()


# Errors whose PostgreSQL message may name the user: described in fixed words instead.
_CONNECTING_ERRORS = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def describe_error(exc: BaseException, timeout: float) -> str:
    """Why a migration failed, for an operator: never the URL, password or connection details."""
    from alembic.util import CommandError

    exc = driver_error(exc)
    if isinstance(exc, (CommandError, LockTimeout)):
        return str(exc)
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _CONNECTING_ERRORS):
        return f"PostgreSQL reported an error (SQLSTATE {exc.sqlstate}): {exc.message}"
    if isinstance(exc, (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        return describe_failure(exc, timeout)
    return f"{type(exc).__name__}: {exc}"


def run_blocking(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` to completion from synchronous code.

    `asyncio.run()` refuses to run inside a running event loop; then `main()` runs on a loop of
    its own in a worker thread while this thread waits (from async code, prefer awaiting).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="svc-migrations") as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The database's revisions before and after an upgrade."""

    before: tuple[str, ...]
    after: tuple[str, ...]


def _run_command(connection: Connection, cfg: Config, revision: str, settings: Settings) -> None:
    """`alembic upgrade revision` with env.py running on `connection` (alembic's connection-sharing recipe)."""
    from alembic import command

    saved = cfg.attributes.get("settings")
    cfg.attributes.update(connection=connection, settings=saved or settings)
    try:
        command.upgrade(cfg, revision)
    finally:
        del cfg.attributes["connection"]
        cfg.attributes["settings"] = saved


async def upgrade_async(settings: Settings, revision: str = "head", *, cfg: Config | None = None) -> Upgrade:
    """Upgrade the settings' database to `revision`, from code running in an event loop.

    Bounded as `run_bounded` says. Raises `LockTimeout` when locks stayed out of reach, else what
    failed (`describe_error` puts either in words).
    """
    cfg = cfg or alembic_config(settings)
    async with connect(settings) as conn:
        await prepare_session(conn, settings)
        before = await conn.run_sync(_revisions)
        await conn.commit()
        await run_bounded(conn, settings, partial(_run_command, cfg=cfg, revision=revision, settings=settings))
        after = await conn.run_sync(_revisions)
        await conn.commit()
    return Upgrade(before, after)


def upgrade(settings: Settings, revision: str = "head", *, cfg: Config | None = None) -> Upgrade:
    """`upgrade_async` for synchronous callers (`python -m svc migrate`, test fixtures)."""
    return run_blocking(lambda: upgrade_async(settings, revision, cfg=cfg))
