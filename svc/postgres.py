"""Connection plumbing shared by every connection the service makes to PostgreSQL.

- `database_url`: which server, DATABASE_URL or the embedded PostgreSQL (development/test).
- `Purpose`, `connect_kwargs`, `engine_arguments`: how each kind of connection is opened, from one
  set of asyncpg options that differ only by what the connection is for.
- `driver_error`: asyncpg's own exception behind SQLAlchemy's wrapper.

Importing this module imports neither SQLAlchemy nor asyncpg (the lifespan uses `database_url`
before the server accepts connections); the functions that need them import them when called.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any

from svc.settings import Settings, normalise_database_url

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.engine import URL

__all__ = ["Purpose", "connect_kwargs", "connector", "database_url", "driver_error", "engine_arguments"]

# PostgreSQL keeps the first NAMEDATALEN - 1 bytes of an application_name.
_APPLICATION_NAME_MAX = 63


class Purpose(Enum):
    """What a connection is for; its value suffixes `application_name` (as seen in `pg_stat_activity`)."""

    POOL = ""  # the engine's pool: the application's own queries
    HEALTH = "health"  # the health probe and the schema check
    MIGRATE = "migrate"  # alembic: no command timeout, DDL may take long


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """The URL of the settings' database, for the duration of the block.

    DATABASE_URL when set. Without it (development and test only: deployed, it raises
    RuntimeError) the embedded PostgreSQL in EMBEDDED_PG_DIR, started or attached to, and let go
    of on exit; it stops when no other handle or process holds it.
    """
    if settings.database_url is not None:
        yield settings.database_url
        return
    if settings.app_env.is_deployed:
        raise RuntimeError(f"DATABASE_URL is required when APP_ENV is {settings.app_env}.")
    from svc.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.embedded_pg_dir)
    url = normalise_database_url(await asyncio.to_thread(embedded.start))
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


def _options(settings: Settings, purpose: Purpose) -> dict[str, Any]:
    """The asyncpg options of a connection for `purpose`, apart from where it goes."""
    name = settings.db_application_name
    if purpose.value:
        name = f"{name}:{purpose.value}"[:_APPLICATION_NAME_MAX]
    return {
        "timeout": settings.db_connect_timeout,
        "command_timeout": None if purpose is Purpose.MIGRATE else settings.db_command_timeout,
        "statement_cache_size": settings.db_statement_cache_size,
        "server_settings": {"application_name": name},
    }


def connect_kwargs(url: str, settings: Settings, purpose: Purpose) -> dict[str, Any]:
    """`asyncpg.connect()` arguments for a connection to `url` for `purpose`, made outside SQLAlchemy.

    `url` is read as SQLAlchemy's asyncpg dialect reads it (user, password, host, port, database,
    and the `host` and `ssl` query parameters), so these connections reach the pool's server.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    kwargs: dict[str, Any] = parsed.translate_connect_args(username="user", database="database")
    for key in ("host", "ssl"):
        if key in parsed.query:
            kwargs[key] = parsed.query[key]
    return {**kwargs, **_options(settings, purpose)}


def connector(url: str, settings: Settings, purpose: Purpose) -> Callable[[float], Awaitable[asyncpg.Connection]]:
    """`connect(budget)`: a new asyncpg connection to `url` for `purpose`, within `budget` seconds."""
    import asyncpg

    kwargs = connect_kwargs(url, settings, purpose)

    async def connect(budget: float) -> asyncpg.Connection:
        return await asyncpg.connect(**{**kwargs, "timeout": budget})

    return connect


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def engine_arguments(url: str, settings: Settings, purpose: Purpose) -> tuple[URL, dict[str, Any]]:
    """The URL and `connect_args` of a SQLAlchemy engine (asyncpg dialect) whose connections are for `purpose`.

    With DB_STATEMENT_CACHE_SIZE=0 (PgBouncer in transaction mode) SQLAlchemy's statement cache is
    off too and every prepared statement gets a unique name: no named statement may outlive its
    transaction, since the next transaction may run on another server connection.
    """
    from sqlalchemy.engine import make_url

    engine_url = make_url(url)
    connect_args = _options(settings, purpose)
    if settings.db_statement_cache_size == 0:
        engine_url = engine_url.update_query_dict({"prepared_statement_cache_size": "0"})
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    return engine_url, connect_args


def driver_error(exc: BaseException) -> BaseException:
    """asyncpg's own exception behind SQLAlchemy's wrappers (`DBAPIError`, its adapter's error: each caused by
    the one beneath); `exc` itself when it is not SQLAlchemy's."""
    while type(exc).__module__.startswith("sqlalchemy."):
        inner = getattr(exc, "orig", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc
