"""Alembic as the service uses it: its configuration, upgrades from code, and the schema check behind readiness.

The configuration is found from the package's location (`alembic.ini` and `migrations/` next to
`svc/`), so nothing depends on the working directory. Importing this module imports neither
alembic nor SQLAlchemy (the service's readiness uses `SchemaCheck`, which needs neither): the
functions that need them import them when called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from svc.probe import Connect, describe_failure, utc_now
from svc.settings import Settings, normalise_database_url

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "ALEMBIC_INI",
    "SCRIPT_LOCATION",
    "SchemaCheck",
    "SchemaStatus",
    "Scripts",
    "Upgrade",
    "alembic_config",
    "configure_cli_logging",
    "connect",
    "database_revisions",
    "describe_error",
    "describe_revisions",
    "read_script_heads",
    "read_scripts",
    "run_blocking",
    "upgrade",
    "upgrade_async",
]

logger = logging.getLogger("svc.migrations")

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
SCRIPT_LOCATION = ROOT / "migrations"
# Key of the transaction-level advisory lock that serialises migrators (replicas, CLI, code).
LOCK_KEY = int.from_bytes(b"svc:migr")
BASE = "base"

T = TypeVar("T")


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
    `version_locations` adds directories of revision scripts to `migrations/versions`.
    """
    _quiet_alembic()
    from alembic.config import Config

    cfg = Config(ALEMBIC_INI if ALEMBIC_INI.is_file() else None)
    cfg.set_main_option("script_location", _ini_value(str(SCRIPT_LOCATION)))
    cfg.set_main_option("path_separator", "os")
    extra = [str(path) for path in version_locations]
    if extra:
        locations = os.pathsep.join([str(SCRIPT_LOCATION / "versions"), *extra])
        cfg.set_main_option("version_locations", _ini_value(locations))
    cfg.attributes["settings"] = settings
    # Called from code, the caller's logging stays as it is.
    cfg.attributes["configure_logging"] = False
    return cfg


@dataclass(frozen=True, slots=True)
class Scripts:
    """What the revision scripts say: their head(s), and every revision they know."""

    heads: tuple[str, ...]
    known: frozenset[str]


def read_scripts(cfg: Config | None = None) -> Scripts:
    """Read the revision scripts (imports alembic and every script: blocking, run it in a thread)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(cfg or alembic_config())
    return Scripts(tuple(sorted(script.get_heads())), frozenset(rev.revision for rev in script.walk_revisions()))


_SCRIPT_NAME = re.compile(r"(?!\.#|__init__).*\.py")
# A module-level `revision = ...` or `down_revision: ... = ...` assignment, on one line.
_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=[ \t]*(.*?)[ \t]*(?:#.*)?$", re.MULTILINE)
_STRING = r"""(?:"([^"\\\n]*)"|'([^'\\\n]*)')"""
_ONE = re.compile(_STRING)
_SEVERAL = re.compile(rf"[(\[]\s*(?:{_STRING}\s*,\s*)*(?:{_STRING}\s*)?[)\]]")


class _NotPlain(Exception):
    """A revision script that only alembic can read (its identifiers are not plain literals on one line)."""


def _identifiers(value: str) -> tuple[str, ...] | None:
    """The revision(s) a literal names: None for `None`; a string; a tuple or list of strings."""
    if value == "None":
        return None
    if _ONE.fullmatch(value) or _SEVERAL.fullmatch(value):
        return tuple(a or b for a, b in _ONE.findall(value))
    raise _NotPlain()


def _revision_of(path: Path) -> tuple[str, tuple[str, ...]]:
    """A script's `revision` and its `down_revision`(s), read from its text without running it.

    Regular expressions, not `ast`: this runs in a worker thread, and on CPython 3.11 `ast` used
    from two threads at once can fail ("AST constructor recursion depth mismatch").
    """
    found: dict[str, tuple[str, ...] | None] = {}
    for name, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8")):
        if name in found:
            raise _NotPlain()  # assigned twice: let alembic run the script
        found[name] = _identifiers(value)
    revision = found.get("revision")
    if revision is None or len(revision) != 1 or "down_revision" not in found:
        raise _NotPlain()
    return revision[0], found["down_revision"] or ()


def read_script_heads(version_locations: Iterable[Path] = ()) -> Scripts:
    """What `read_scripts(alembic_config(version_locations=...))` says, read without alembic (serve-time readiness).

    Alembic costs ~11 MB and tens of milliseconds to import; a script's identifiers are plain
    assignments, read here from its text without running it. A head is a revision no other script revises.
    Scripts whose identifiers are not literals, or anything unusual (duplicates, a revision that
    names a missing one), make this defer to alembic, which reads them or says what is wrong.
    """
    extra = list(version_locations)
    try:
        revisions = [
            _revision_of(path)
            for directory in [SCRIPT_LOCATION / "versions", *extra]
            for path in sorted(directory.iterdir())
            if _SCRIPT_NAME.fullmatch(path.name) and path.is_file()
        ]
    except (_NotPlain, OSError, UnicodeDecodeError):
        return read_scripts(alembic_config(version_locations=extra))
    known = frozenset(revision for revision, _ in revisions)
    revised = {down for _, downs in revisions for down in downs}
    if len(known) != len(revisions) or not revised <= known:
        return read_scripts(alembic_config(version_locations=extra))
    return Scripts(tuple(sorted(known - revised)), known)


def describe_revisions(revisions: tuple[str, ...]) -> str:
    """Revisions as people read them: comma-separated, or "base" when there are none."""
    return ", ".join(revisions) if revisions else BASE


async def database_revisions(conn: asyncpg.Connection) -> tuple[str, ...]:
    """The revisions recorded in the database's `alembic_version` (empty: no migration applied)."""
    if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
        return ()
    rows = await conn.fetch("SELECT version_num FROM alembic_version")
    return tuple(sorted(row[0] for row in rows))


def _revisions(connection: Connection) -> tuple[str, ...]:
    from sqlalchemy import text

    if connection.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return ()
    return tuple(sorted(connection.execute(text("SELECT version_num FROM alembic_version")).scalars()))


def lock(connection: Connection) -> None:
    """Wait for other migrators (replicas, `alembic`, `python -m svc migrate`); held until the transaction ends."""
    from sqlalchemy import text

    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[AsyncConnection]:
    """A connection for migrations to the settings' database.

    Without DATABASE_URL (development/test only) it is the embedded PostgreSQL the app uses,
    started if needed and let go afterwards. No command timeout: DDL may take long.
    """
    from sqlalchemy import NullPool
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = settings.database_url
    embedded = None
    if url is None:
        if settings.app_env.is_deployed:
            raise RuntimeError(f"DATABASE_URL is required when APP_ENV is {settings.app_env}.")
        from svc.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.embedded_pg_dir)
        url = normalise_database_url(await asyncio.to_thread(embedded.start))
    try:
        engine_url = make_url(url)
        connect_args: dict[str, Any] = {
            "timeout": settings.db_connect_timeout,
            "command_timeout": None,
            "statement_cache_size": settings.db_statement_cache_size,
            "server_settings": {"application_name": f"{settings.db_application_name}:migrate"[:63]},
        }
        if settings.db_statement_cache_size == 0:
            # PgBouncer in transaction mode, as in svc.db.
            engine_url = engine_url.update_query_dict({"prepared_statement_cache_size": "0"})
            connect_args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4().hex}__"
        engine = create_async_engine(engine_url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)
        try:
            async with engine.connect() as conn:
                yield conn
        finally:
            await engine.dispose()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


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
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # asyncpg's own exception is the cause of SQLAlchemy's DBAPI adapter error.
        exc = exc.orig.__cause__ or exc.orig
    if isinstance(exc, CommandError):
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


def _upgrade_on(connection: Connection, cfg: Config, revision: str) -> Upgrade:
    from alembic import command

    lock(connection)
    before = _revisions(connection)
    cfg.attributes["connection"] = connection
    try:
        command.upgrade(cfg, revision)
    finally:
        del cfg.attributes["connection"]
    return Upgrade(before, _revisions(connection))


async def upgrade_async(settings: Settings, revision: str = "head", *, cfg: Config | None = None) -> Upgrade:
    """Upgrade the settings' database to `revision`, from code running in an event loop.

    Alembic's connection-sharing recipe: env.py runs on the connection it is given, in one
    transaction committed here, so no nested `asyncio.run()` is needed.
    """
    cfg = cfg or alembic_config(settings)
    async with connect(settings) as conn:
        result = await conn.run_sync(_upgrade_on, cfg, revision)
        await conn.commit()
    return result


def upgrade(settings: Settings, revision: str = "head", *, cfg: Config | None = None) -> Upgrade:
    """`upgrade_async` for synchronous callers (`python -m svc migrate`, test fixtures)."""
    return run_blocking(lambda: upgrade_async(settings, revision, cfg=cfg))


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The database's revision compared with the scripts' head(s)."""

    status: str  # pass (at head) | warn (behind, ahead, or not known)
    time: str
    measured_at: float  # time.monotonic()
    current: tuple[str, ...] | None = None  # None: not read
    head: tuple[str, ...] | None = None  # None: scripts not read
    output: str | None = None

    def observed(self) -> dict[str, str | None]:
        return {
            "current": None if self.current is None else describe_revisions(self.current),
            "head": None if self.head is None else describe_revisions(self.head),
        }


def compare(current: tuple[str, ...], scripts: Scripts) -> str | None:
    """Why `current` is not the scripts' head, in plain words; None when it is."""
    if set(current) == set(scripts.heads):
        return None
    now = describe_revisions(current) + (" (no migration applied)" if not current else "")
    expected = describe_revisions(scripts.heads)
    if any(revision not in scripts.known for revision in current):
        return (
            f"Database schema is at {now}, expected {expected}: the database is ahead of "
            "this release's migration scripts (or from another branch)."
        )
    return f"Database schema is at {now}, expected {expected}: migrations are pending (python -m svc migrate)."


class SchemaCheck:
    """Whether the database's schema is at the scripts' head: the schema part of readiness.

    `start()` begins the first comparison in the background (the scripts are read in a thread,
    without alembic unless they need it), so start-up never waits for it. Until the database is at head,
    `check()` re-reads its revision at most once per `ttl` seconds (concurrent callers share one
    read, bounded by `timeout`), so applying migrations to a running service makes it ready.
    Once at head, the answer comes from memory and no further query is made.
    """

    def __init__(
        self, connect: Connect, *, timeout: float, ttl: float, scripts: Callable[[], Scripts] = read_script_heads
    ) -> None:
        self._connect = connect
        self.timeout = timeout
        self.ttl = ttl
        self._read_scripts = scripts
        self._scripts: asyncio.Future[Scripts] | None = None
        self._inflight: asyncio.Future[SchemaStatus] | None = None
        self.last: SchemaStatus | None = None

    def start(self) -> None:
        self._begin()

    def _begin(self) -> asyncio.Future[SchemaStatus]:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._measure())
            self._inflight.add_done_callback(self._finished)
        return self._inflight

    async def check(self) -> SchemaStatus:
        last = self.last
        if last is not None and (last.status == "pass" or time.monotonic() - last.measured_at < self.ttl):
            return last
        inflight = self._begin()
        try:
            async with asyncio.timeout(self.timeout):
                # Shielded: a caller that goes away must not cancel the read others are waiting for.
                return await asyncio.shield(inflight)
        except TimeoutError:
            if self.last is not None:
                return self.last
            return SchemaStatus("warn", utc_now(), time.monotonic(), output="The database schema is being checked.")

    def _finished(self, future: asyncio.Future[SchemaStatus]) -> None:
        self._inflight = None
        if future.cancelled():
            return
        previous, self.last = self.last, future.result()
        if previous is None or previous.output != self.last.output:
            if self.last.output is None:
                logger.info("Database schema is at head (%s)", describe_revisions(self.last.current or ()))
            else:
                logger.warning("%s", self.last.output)

    async def _measure(self) -> SchemaStatus:
        if self._scripts is None:
            self._scripts = asyncio.ensure_future(asyncio.to_thread(self._read_scripts))
        try:
            scripts = await asyncio.shield(self._scripts)
        except Exception as exc:
            if self.last is None:
                logger.exception("The migration scripts could not be read")
            output = f"The migration scripts could not be read ({type(exc).__name__})."
            return SchemaStatus("warn", utc_now(), time.monotonic(), output=output)
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect(self.timeout)
                try:
                    current = await database_revisions(conn)
                except BaseException:
                    conn.terminate()
                    raise
                await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failure = f"The database schema revision could not be read: {describe_failure(exc, self.timeout)}"
            return SchemaStatus("warn", utc_now(), time.monotonic(), head=scripts.heads, output=failure)
        difference = compare(current, scripts)
        status = "pass" if difference is None else "warn"
        return SchemaStatus(status, utc_now(), time.monotonic(), current, scripts.heads, difference)

    async def close(self) -> None:
        """Stop a check in progress (at shutdown), and wait until it has unwound."""
        pending = {future for future in (self._inflight, self._scripts) if future is not None and not future.done()}
        for future in pending:
            future.cancel()
        if pending:
            # A read of the scripts runs in a thread and cannot be interrupted: it is abandoned, not waited for.
            await asyncio.wait(pending, timeout=1)
