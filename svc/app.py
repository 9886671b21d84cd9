"""The application factory, its routes and its lifespan. `uvicorn svc.app:app` serves `app`.

Start-up is split so the server accepts connections early: importing this module and building the
app touch neither SQLAlchemy nor asyncpg nor alembic, and the lifespan hands the database side
(importing SQLAlchemy in a worker thread, the engine, the probe, the schema check) to a background
task. `/health/live` answers at once; `/health/ready` waits for that task (within
HEALTH_DB_TIMEOUT) and answers 503 'Starting up.' until it has finished.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from svc.errors import ServiceError, handle_error
from svc.health import DatabaseHealth, Health, Liveness, Readiness
from svc.hosts import HostMiddleware, allows_any_host
from svc.logging import AccessLog, configure_logging, flush_access_log
from svc.metrics import Metrics, MetricsEndpoint
from svc.middleware import (
    BodyLimitMiddleware,
    DirectRoutes,
    DirectRoutesMiddleware,
    EdgeMiddleware,
    security_headers,
)
from svc.openapi import openapi_route
from svc.settings import DEVELOPMENT_SECRET_KEY, Settings, load_settings, load_settings_or_exit
from svc.shutdown import drain_on_signals

__all__ = ["Service", "create_app", "lifespan", "started"]

logger = logging.getLogger("svc")
HEALTH_METHODS = ["GET", "HEAD"]


class Service(Starlette):
    """Starlette without its outermost `ServerErrorMiddleware` where that only repeats what the server does.

    Without a handler for 500/`Exception` and without debug, that middleware answers an exception
    with a plain-text 500 and raises it again for the server, which logs it and would have sent
    the same 500 itself (uvicorn does). svc's `EdgeMiddleware` answers exceptions from
    the routes with a problem+json 500 before either sees them. Dropped, it saves every request a
    `send` wrapper: a few microseconds each under load, more than most of svc's own middleware.
    """

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if isinstance(stack, ServerErrorMiddleware) and stack.handler is None and not stack.debug:
            return stack.app
        return stack


def _import_database_modules() -> None:
    """What the database side needs (SQLAlchemy's core takes ~150 ms; its ORM waits for first use): run in a thread."""
    import sqlalchemy.dialects.postgresql.asyncpg  # noqa: F401 - create_async_engine loads it by name

    import svc.db
    import svc.dblog
    import svc.probe
    import svc.schema  # noqa: F401


async def start_database(state: Any, settings: Settings, url: str, stack: AsyncExitStack) -> None:
    """The lifespan's background start-up: engine, probe and schema check; then `state.phase` is "serving".

    Everything made here is undone by `stack` when the lifespan ends. The probe's connection is
    opened ahead of the first check, so that check measures a query, not a connect.
    """
    await asyncio.to_thread(_import_database_modules)
    from svc.db import Database
    from svc.dblog import install_slow_query_log
    from svc.postgres import Purpose, connector
    from svc.probe import DatabaseProbe
    from svc.schema import SchemaCheck

    db = Database(url, settings)
    install_slow_query_log(db.sync_engine, settings.db_slow_query_ms)
    stack.push_async_callback(db.dispose)
    connect = connector(url, settings, Purpose.HEALTH)
    schema = SchemaCheck(connect, timeout=settings.health_db_timeout, ttl=settings.health_db_cache_ttl)
    stack.push_async_callback(schema.close)
    probe = DatabaseProbe(
        # A probe that had to reconnect may have reached another server: its schema is read again.
        schema.watch(connect),
        timeout=settings.health_db_timeout,
        warn_ms=settings.health_db_warn_ms,
        ttl=settings.health_db_cache_ttl,
    )
    stack.push_async_callback(probe.close)
    state.db, state.probe, state.schema = db, probe, schema
    schema.start()
    probe.open_soon()
    if state.phase == "starting":  # not if a signal has begun draining already
        state.phase = "serving"
    logger.info("svc %s started (%s)", settings.app_version, settings.app_env)
    freeze_heap()


def freeze_heap() -> None:
    """Move everything start-up made out of the garbage collector's way (`gc.freeze`).

    Full collections then no longer walk the modules, classes and settings made at start-up: on a
    server that allocates per request, those collections were the p99 (tens of ms each). The
    first time in a process, garbage is collected first (once: a full collection of a big heap,
    as in a test run that builds many apps, takes a while).
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
    gc.freeze()


async def started(app: Starlette) -> bool:
    """Wait for the lifespan's background start-up to finish; whether it succeeded (bound it with `asyncio.timeout`).

    True at once when there is none (the lifespan has not run).
    """
    task: asyncio.Task[None] | None = getattr(app.state, "startup", None)
    if task is None:
        return True
    await asyncio.wait({task})
    return not task.cancelled() and task.exception() is None


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the database (embedded if no URL), create the engine, probe and schema check; undo it all on shutdown.

    The database need not be reachable: the service starts, and readiness reports it. The engine,
    probe and schema check are made by a background task (`start_database`), so the server
    accepts connections before SQLAlchemy has even been imported.
    """
    state = app.state
    settings: Settings = state.settings
    async with AsyncExitStack() as stack:
        from svc.postgres import database_url

        url = await stack.enter_async_context(database_url(settings))
        stack.callback(flush_access_log)
        if state.metrics is not None:
            await stack.enter_async_context(state.metrics.running(state))
        stack.enter_context(drain_on_signals(state, settings.shutdown_drain_seconds))
        startup = asyncio.create_task(start_database(state, settings, url, stack), name="svc-startup")
        startup.add_done_callback(_report_failure(state))
        state.startup = startup
        try:
            yield
        finally:
            state.phase = "draining"
            # Before the stack unwinds what start-up made: a start-up still running stops first.
            startup.cancel()
            await asyncio.wait({startup})


def _report_failure(state: Any) -> Any:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            state.phase = "failed"
            logger.error("Start-up failed: readiness stays 503", exc_info=exc)

    return done


def create_app(settings: Settings | None = None, *, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the application for `settings` (read from the environment when omitted).

    `routes` are added after the built-in health routes.
    """
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.secret_key == DEVELOPMENT_SECRET_KEY:
        logger.warning("SECRET_KEY is not set: using the fixed development key (allowed in %s only)", settings.app_env)
    metrics = Metrics(settings) if settings.metrics_enabled else None
    health = [
        Route("/health", Health(), methods=HEALTH_METHODS),
        Route("/health/live", Liveness(), methods=HEALTH_METHODS),
        Route("/health/ready", Readiness(), methods=HEALTH_METHODS),
        Route("/health/db", DatabaseHealth(), methods=HEALTH_METHODS),
    ]
    any_host = allows_any_host(settings.allowed_hosts)
    # Outermost first. The edge is outermost: metrics time every middleware and count the 413s and 500s they
    # answer, and those answers carry the request id and security headers too. With no Host check between
    # them, it answers the health routes itself (requests without a body: nothing for the body limit to do).
    middleware = [
        Middleware(
            EdgeMiddleware,
            headers=security_headers(hsts=settings.app_env.is_deployed),
            metrics=metrics,
            access_log=AccessLog(logging.getLogger("svc.access")) if settings.access_log else None,
            direct=DirectRoutes(health) if any_host else None,
        )
    ]
    if not any_host:
        # A refused Host is answered, counted and logged like any error.
        middleware.append(Middleware(HostMiddleware, allowed_hosts=settings.allowed_hosts))
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    app = Service(
        routes=[
            *health,
            *([Route("/metrics", MetricsEndpoint(), methods=HEALTH_METHODS)] if metrics is not None else []),
            *routes,
        ],
        # Innermost, after every other middleware: the health routes (first in the router) skip Starlette's
        # exception middleware and router, which cost more than the endpoints themselves.
        middleware=[*middleware, Middleware(DirectRoutesMiddleware, routes=health)],
        exception_handlers={HTTPException: handle_error, ServiceError: handle_error},
        lifespan=lifespan,
    )
    # After the other routes, so it can describe them all (and a route of the caller's may replace it).
    app.router.routes.append(openapi_route(settings, app.routes))
    # An unknown path is a 404 problem: no 307 to the slash-toggled path (with a Location built from the Host header).
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.metrics = metrics
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
    app = create_app(load_settings_or_exit())
    globals()["app"] = app
    return app
