"""A test app: the service plus a route that holds a pooled connection, for `uvicorn --factory tests.apps:create_test_app`."""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from svc.app import App, create_app
from svc.http.routing import Route as SvcRoute
from svc.service import Service


async def hold(request: Request) -> JSONResponse:
    """Check out a pooled connection, query it, keep it `?seconds=` long; then say who served and in which phase."""
    seconds = float(request.query_params.get("seconds", "0"))
    state = request.app.state
    runtime = request.app.runtime
    async with runtime.database().session() as session:
        backend = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # Counted only once the query answered: "n holding" means n connections checked out, not n waiting for one.
        state.holding = getattr(state, "holding", 0) + 1
        try:
            await asyncio.sleep(seconds)
        finally:
            state.holding -= 1
    return JSONResponse({"pid": os.getpid(), "backend": backend, "phase": runtime.phase})


async def holding(request: Request) -> JSONResponse:
    """How many `/hold` requests hold a connection that has answered a query."""
    return JSONResponse({"holding": getattr(request.app.state, "holding", 0)})


async def fast(request: Request) -> JSONResponse:
    """One statement on the fast path (`svc.db.Connection`): 41 + 1."""
    async with request.app.runtime.database().connection() as conn:
        answer = await conn.fetchval("SELECT $1::int + 1", 41)
    return JSONResponse({"answer": answer})


ROUTES = [Route("/hold", hold), Route("/holding", holding), Route("/fast", fast)]


def create_test_app() -> App:
    """The service, configured from the environment, with the routes above."""
    return create_app(routes=ROUTES)


async def whoami(request: Request) -> JSONResponse:
    """The client address and scheme the service sees (after any trusted proxy's headers)."""
    client = request.client
    return JSONResponse({"client": client.host if client else None, "scheme": request.url.scheme})


#: `SERVICE=tests.apps:whoami_service`: svc plus `/whoami`.
whoami_service = Service(routes=[SvcRoute("/whoami", whoami)])
