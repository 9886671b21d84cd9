"""A test app: the service plus `GET /hot`, a read of the table tests/test_safe_migrations.py locks
(`uvicorn --factory tests.safe_migrations_app:create_reader_app`)."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from svc.app import App, create_app


async def hot(request: Request) -> JSONResponse:
    """Count the rows of `hot`: a read that queues behind any ACCESS EXCLUSIVE lock asked for on it."""
    async with request.app.runtime.database().session() as session:
        rows = (await session.execute(text("SELECT count(*) FROM hot"))).scalar_one()
    return JSONResponse({"rows": rows})


def create_reader_app() -> App:
    """The service, configured from the environment, with `/hot`."""
    return create_app(routes=[Route("/hot", hot)])
