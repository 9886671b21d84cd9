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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
    "Upgrade",
    "alembic_config",
    "configure_cli_logging",
    "connect",
    "describe_error",
    "lock",
    "read_scripts",
    "run_blocking",
    "upgrade",
    "upgrade_async",
]

ALEMBIC_INI = SCRIPT_LOCATION.parent / "alembic.ini"
# Key of the transaction-level advisory lock that serialises migrators (replicas, CLI, code).
LOCK_KEY = int.from_bytes(b"svc:migr")

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
    """Wait for other migrators (replicas, `alembic`, `python -m svc migrate`); held until the transaction ends."""
    from sqlalchemy import text

    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


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
