"""The application: `create_app(settings)` builds it, and `uvicorn svc.app:app` serves `app`.

Start-up is split so the server accepts connections early: importing this module and building the
app touch neither SQLAlchemy nor asyncpg nor alembic, and the lifespan hands the database side
(importing SQLAlchemy in a worker thread, the engine, the probe, the schema check) to a background
task. `/health/live` answers at once; the database-backed health endpoints wait for that task within
their budget, and a handler that asks for the database meanwhile gets a 503 problem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.datastructures import State, URLPath
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from svc.access import AccessLog, flush_access_log
from svc.health import DatabaseHealth, Health, Liveness, Readiness
from svc.http.edge import Edge
from svc.http.routing import Route, Router
from svc.logging import configure_logging
from svc.metrics import Metrics, MetricsEndpoint
from svc.openapi import openapi_route
from svc.runtime import Phase, Runtime
from svc.service import Service, load_service
from svc.settings import DEVELOPMENT_SECRET_KEY, Settings, load_settings, load_settings_or_exit
from svc.shutdown import drain_on_signals

__all__ = ["App", "create_app", "lazy_app", "lifespan", "started"]

logger = logging.getLogger("svc")
HEALTH_METHODS = ("GET", "HEAD")


def _import_database_modules() -> None:
    """Import what the database side needs (SQLAlchemy's core; its ORM waits for first use): run it in a thread."""
    import sqlalchemy.dialects.postgresql.asyncpg  # noqa: F401 - create_async_engine loads it by name

    import svc.db
    import svc.dblog
    import svc.probe
    import svc.schema  # noqa: F401


async def start_database(app: App, url: str, stack: AsyncExitStack) -> None:
    """The lifespan's background start-up: the service (`SERVICE`), the engine, the probe and the schema
    check; then the phase is `SERVING`.

    Everything made here is undone by `stack` when the lifespan ends. The probe's connection is
    opened ahead of the first check, so that check measures a query, not a connect.
    """
    runtime = app.runtime
    migrations: list[Path] = []
    if runtime.settings.service is not None:
        service = await asyncio.to_thread(load_service, runtime.settings.service)
        app.include(service)
        migrations = [service.migrations] if service.migrations is not None else []
    await asyncio.to_thread(_import_database_modules)
    from svc.db import Database
    from svc.dblog import install_slow_query_log, install_statement_spans
    from svc.postgres import Purpose, connector
    from svc.probe import DatabaseProbe
    from svc.schema import SchemaCheck, read_script_heads

    settings = runtime.settings
    db = Database(url, settings)
    install_slow_query_log(db.sync_engine, settings.db_slow_query_ms)
    if runtime.tracing is not None:
        install_statement_spans(db.sync_engine)
    stack.push_async_callback(db.dispose)
    connect = connector(url, settings, Purpose.HEALTH)
    schema = SchemaCheck(
        connect,
        timeout=settings.health_db_timeout,
        ttl=settings.health_db_cache_ttl,
        scripts=functools.partial(read_script_heads, migrations),
    )
    stack.push_async_callback(schema.close)
    probe = DatabaseProbe(
        # A probe that had to reconnect may have reached another server: its schema is read again.
        schema.watch(connect),
        timeout=settings.health_db_timeout,
        warn_ms=settings.health_db_warn_ms,
        ttl=settings.health_db_cache_ttl,
    )
    stack.push_async_callback(probe.close)
    runtime.db, runtime.probe, runtime.schema = db, probe, schema
    schema.start()
    probe.open_soon()
    if runtime.phase is Phase.STARTING:  # not if a signal has begun draining already
        runtime.phase = Phase.SERVING
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


async def started(app: App) -> bool:
    """Wait for the lifespan's background start-up to finish; whether it succeeded (bound it with `asyncio.timeout`).

    True at once when there is none (the lifespan has not run).
    """
    task = app.runtime.startup
    if task is None:
        return True
    await asyncio.wait({task})
    return not task.cancelled() and task.exception() is None


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    """Start the database (embedded if no URL), create the engine, probe and schema check; undo it all on shutdown.

    The database need not be reachable: the service starts, and readiness reports it. The engine,
    probe and schema check are made by a background task (`start_database`), so the server
    accepts connections before SQLAlchemy has even been imported.
    """
    runtime = app.runtime
    settings = runtime.settings
    async with AsyncExitStack() as stack:
        from svc.postgres import database_url

        url = await stack.enter_async_context(database_url(settings))
        stack.callback(flush_access_log)
        if runtime.tracing is not None:
            # Last out: the spans of the requests answered while draining are sent too (it blocks: a thread).
            stack.push_async_callback(asyncio.to_thread, runtime.tracing.shutdown)
        if runtime.metrics is not None:
            await stack.enter_async_context(runtime.metrics.running(runtime))
        stack.enter_context(drain_on_signals(runtime, settings.shutdown_drain_seconds))
        startup = asyncio.create_task(start_database(app, url, stack), name="svc-startup")
        startup.add_done_callback(_report_failure(app))
        runtime.startup = startup
        try:
            yield
        finally:
            runtime.phase = Phase.DRAINING
            # Before the stack unwinds what start-up made: a start-up still running stops first.
            startup.cancel()
            await asyncio.wait({startup})


def _report_failure(app: App) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            app.runtime.phase = Phase.FAILED
            if app.router.pending is not None:
                app.router.pending = Phase.FAILED.reason
            logger.error("Start-up failed: readiness stays 503", exc_info=exc)

    return done


Lifespan = Callable[["App"], AbstractAsyncContextManager[None]]


class App:
    """The ASGI application: lifespan messages run the lifespan; requests go through the edge to the router.

    `runtime` holds what the lifespan makes; `state` is free for the service's own objects
    (Starlette's `request.app.state`).
    """

    def __init__(
        self,
        runtime: Runtime,
        routes: Sequence[BaseRoute],
        *,
        pending: str | None = None,
        lifespan: Lifespan = lifespan,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.router = Router([], pending=pending)
        self._described: list[BaseRoute] = []
        self.serve(routes)
        access_log = AccessLog(logging.getLogger("svc.access")) if settings.access_log else None
        self.edge = Edge(self.router, settings, metrics=runtime.metrics, access_log=access_log, tracing=runtime.tracing)
        self.lifespan_context = lifespan
        self.state = State()

    def serve(self, routes: Sequence[BaseRoute]) -> None:
        """Serve `routes`, then `/openapi.json` describing them all (a route of the caller's may replace it)."""
        self._described = list(routes)
        self.router.set_routes([*self._described, openapi_route(self.runtime.settings, self._described)])

    def include(self, service: Service) -> None:
        """Serve a service's routes too, after the ones served now; no route is pending any more."""
        self.serve([*self._described, *service.routes])
        self.router.pending = None

    @property
    def routes(self) -> list[BaseRoute]:
        return self.router.routes

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        return self.router.url_path_for(name, **path_params)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if scope["type"] == "lifespan":
            return await self.lifespan(scope, receive, send)
        await self.edge(scope, receive, send)

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol around `lifespan_context` (a failed start-up is reported, then raised)."""
        started = False
        await receive()
        try:
            async with self.lifespan_context(self):
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()
        except BaseException:
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings | None = None, *, routes: Sequence[BaseRoute] = ()) -> App:
    """Build the application for `settings` (read from the environment when omitted).

    `routes` come after the built-in health routes and `/metrics`; the service that `SERVICE`
    names adds its routes after them, once the lifespan's background start-up has imported it
    (until then a request no route takes is a 503 `Starting up.`). `/openapi.json` describes them all.
    """
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.secret_key == DEVELOPMENT_SECRET_KEY:
        logger.warning("SECRET_KEY is not set: using the fixed development key (allowed in %s only)", settings.app_env)
    metrics = Metrics(settings) if settings.metrics_enabled else None
    runtime = Runtime(settings, metrics)
    if settings.tracing:
        from svc.otel import Tracing  # OpenTelemetry is imported only when tracing is configured

        tracing = runtime.tracing = Tracing(settings)
        if metrics is not None:
            metrics.spans_lost = lambda: tracing.lost
    builtin = [
        Route("/health", Health(runtime), methods=HEALTH_METHODS),
        Route("/health/live", Liveness(), methods=HEALTH_METHODS),
        Route("/health/ready", Readiness(runtime), methods=HEALTH_METHODS),
        Route("/health/db", DatabaseHealth(runtime), methods=HEALTH_METHODS),
    ]
    if metrics is not None:
        builtin.append(Route("/metrics", MetricsEndpoint(runtime, metrics), methods=HEALTH_METHODS))
    pending = None if settings.service is None else Phase.STARTING.reason
    return App(runtime, [*builtin, *routes], pending=pending)


def lazy_app(*, service: str | None = None) -> Callable[[str], App]:
    """A module `__getattr__` that builds the module's `app` from the environment on first access, not at import.

    `uvicorn module:app` reads it; importing the module reads no configuration, and an invalid one
    gives one readable message and exit status 1 instead of a traceback. `service` (a `SERVICE`
    value) is the service the app serves whatever the environment says.
    """
    built: list[App] = []

    def attribute(name: str) -> App:
        if name != "app":
            raise AttributeError(name)
        if not built:
            settings = load_settings_or_exit()
            if service is not None:
                settings = dataclasses.replace(settings, service=service)
            built.append(create_app(settings))
        return built[0]

    return attribute


__getattr__ = lazy_app()
