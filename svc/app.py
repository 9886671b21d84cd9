"""The application factory, its routes and its lifespan. `uvicorn svc.app:app` serves `app`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from svc.db import Database, connect_kwargs
from svc.errors import ServiceError, handle_error
from svc.health import DatabaseHealth, Health, Liveness, Readiness
from svc.logging import configure_logging
from svc.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
    UnhandledErrorMiddleware,
)
from svc.migrations import SchemaCheck
from svc.probe import DatabaseProbe
from svc.settings import DEVELOPMENT_SECRET_KEY, ConfigError, Settings, load_settings

__all__ = ["create_app", "lifespan"]

logger = logging.getLogger("svc")
HEALTH_METHODS = ["GET", "HEAD"]


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the database (embedded if no URL), create the engine, probe and schema check; undo it all on shutdown.

    The database need not be reachable: the service starts, and readiness reports it. The schema
    check (the database's revision against the migration scripts' head) runs in the background.
    """
    state = app.state
    settings: Settings = state.settings
    async with AsyncExitStack() as stack:
        url = settings.database_url
        if url is None:
            from svc.embedded import EmbeddedPostgres
            from svc.settings import normalise_database_url

            embedded = EmbeddedPostgres(settings.embedded_pg_dir)
            url = normalise_database_url(await asyncio.to_thread(embedded.start))
            stack.push_async_callback(asyncio.to_thread, embedded.stop)
        db = Database(url, settings)
        stack.push_async_callback(db.dispose)
        kwargs = connect_kwargs(db.url, settings)
        kwargs["server_settings"] = {"application_name": f"{settings.db_application_name}:health"}

        async def connect(budget: float) -> asyncpg.Connection:
            return await asyncpg.connect(**kwargs, timeout=budget)

        probe = DatabaseProbe(
            connect,
            timeout=settings.health_db_timeout,
            warn_ms=settings.health_db_warn_ms,
            ttl=settings.health_db_cache_ttl,
        )
        stack.push_async_callback(probe.close)
        schema = SchemaCheck(connect, timeout=settings.health_db_timeout, ttl=settings.health_db_cache_ttl)
        stack.push_async_callback(schema.close)
        state.db, state.probe, state.schema = db, probe, schema
        schema.start()
        state.phase = "serving"
        logger.info("svc %s started (%s)", settings.app_version, settings.app_env)
        try:
            yield
        finally:
            state.phase = "draining"


def create_app(settings: Settings | None = None, *, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the application for `settings` (read from the environment when omitted).

    `routes` are added after the built-in health routes.
    """
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.secret_key == DEVELOPMENT_SECRET_KEY:
        logger.warning("SECRET_KEY is not set: using the fixed development key (allowed in %s only)", settings.app_env)
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware, hsts=settings.app_env.is_deployed),
    ]
    if settings.access_log:
        middleware.append(Middleware(AccessLogMiddleware))
    middleware.append(Middleware(UnhandledErrorMiddleware))
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    app = Starlette(
        routes=[
            Route("/health", Health(), methods=HEALTH_METHODS),
            Route("/health/live", Liveness(), methods=HEALTH_METHODS),
            Route("/health/ready", Readiness(), methods=HEALTH_METHODS),
            Route("/health/db", DatabaseHealth(), methods=HEALTH_METHODS),
            *routes,
        ],
        middleware=middleware,
        exception_handlers={HTTPException: handle_error, ServiceError: handle_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.started_monotonic = time.monotonic()
    app.state.phase = "starting"
    return app


def __getattr__(name: str) -> Starlette:
    """Build `app` from the environment on first access (`uvicorn svc.app:app`), not at import.

    Importing `create_app` therefore reads no configuration, and invalid configuration gives
    one readable message and exit status 1 instead of a traceback.
    """
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        app = create_app()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    globals()["app"] = app
    return app
