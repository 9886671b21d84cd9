"""The database: one SQLAlchemy `AsyncEngine` on asyncpg, sessions per unit of work, driver errors typed.

Importing this module imports SQLAlchemy's core, not its ORM: the engine is built on the core,
and `sqlalchemy.ext.asyncio` (which imports the ORM) is imported when the application first uses
`engine` or `session()`. A service that only answers health checks never loads the ORM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from svc.errors import DatabaseError, DatabaseUnavailable
from svc.postgres import Purpose, driver_error, engine_arguments
from svc.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

__all__ = ["Database", "PoolStats", "is_unavailable"]

_SETTING_NAME = "app."


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
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
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
        ),
    )


class Database:
    """Owns the engine for one application instance; created and disposed by the lifespan."""

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
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args=connect_args,
        )
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None

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

    @asynccontextmanager
    async def session(self, **config: str) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on error.

        Each keyword becomes a transaction-local setting `app.<name>` (for row-level security
        policies reading `current_setting('app.<name>')`). Driver errors leave as
        `DatabaseUnavailable` (503) or `DatabaseError` (500), never with the driver's text.
        """
        try:
            async with self.sessionmaker() as session, session.begin():
                for name, value in config.items():
                    if not name.isidentifier():
                        raise ValueError(f"Invalid setting name: {name!r}")
                    await session.execute(
                        text("SELECT set_config(:name, :value, true)"), {"name": _SETTING_NAME + name, "value": value}
                    )
                yield session
        except (sa_exc.SQLAlchemyError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable() from exc
            raise DatabaseError() from exc

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        else:  # never used: no connection was made, and none can be made without the async wrapper
            self.sync_engine.dispose()
