"""Plain Starlette on an asyncpg pool, written as Starlette's documentation writes an app
(`uvicorn bench.techempower.starlette_asyncpg:app`): `JSONResponse`, `HTMLResponse`, a lifespan for the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from bench.techempower.common import (
    READ_FORTUNES,
    READ_WORLD,
    WRITE_WORLD,
    benchmark_database,
    create_pool,
    query_count,
    random_id,
    random_ids,
    random_number,
    render_fortunes,
)


async def json(request: Request) -> JSONResponse:
    return JSONResponse({"message": "Hello, World!"})


async def db(request: Request) -> JSONResponse:
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(READ_WORLD, random_id())
    return JSONResponse({"id": row[0], "randomNumber": row[1]})


async def queries(request: Request) -> JSONResponse:
    ids = random_ids(query_count(request.query_params.get("queries")))
    async with request.state.pool.acquire() as connection:
        statement = await connection.prepare(READ_WORLD)
        worlds = [{"id": id_, "randomNumber": (await statement.fetchrow(id_))[1]} for id_ in ids]
    return JSONResponse(worlds)


async def updates(request: Request) -> JSONResponse:
    changes = [(id_, random_number()) for id_ in random_ids(query_count(request.query_params.get("queries")))]
    async with request.state.pool.acquire() as connection:
        statement = await connection.prepare(READ_WORLD)
        for id_, _ in changes:
            await statement.fetchrow(id_)
        await connection.executemany(WRITE_WORLD, changes)
    return JSONResponse([{"id": id_, "randomNumber": number} for id_, number in changes])


async def fortunes(request: Request) -> HTMLResponse:
    async with request.state.pool.acquire() as connection:
        rows = await connection.fetch(READ_FORTUNES)
    return HTMLResponse(render_fortunes(rows))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    async with benchmark_database() as url:
        pool = await create_pool(url)
        try:
            yield {"pool": pool}
        finally:
            await pool.close()


app = Starlette(
    routes=[
        Route("/json", json),
        Route("/db", db),
        Route("/queries", queries),
        Route("/updates", updates),
        Route("/fortunes", fortunes),
    ],
    lifespan=lifespan,
)
