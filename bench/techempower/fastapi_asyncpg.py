"""FastAPI on an asyncpg pool (`uvicorn bench.techempower.fastapi_asyncpg:app`), as TechEmpower's own FastAPI
app is written: endpoints return plain dicts and lists (no response model: FastAPI's encoder only), `queries`
is a query parameter parsed by hand (a non-number is 1, not a 422), the pool is made by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with benchmark_database() as url:
        pool = await create_pool(url)
        try:
            yield {"pool": pool}
        finally:
            await pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.get("/json", response_model=None)
async def json() -> dict[str, str]:
    return {"message": "Hello, World!"}


@app.get("/db", response_model=None)
async def db(request: Request) -> dict[str, int]:
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(READ_WORLD, random_id())
    return {"id": row[0], "randomNumber": row[1]}


@app.get("/queries", response_model=None)
async def queries(request: Request, queries: str | None = None) -> list[dict[str, int]]:
    ids = random_ids(query_count(queries))
    async with request.state.pool.acquire() as connection:
        statement = await connection.prepare(READ_WORLD)
        return [{"id": id_, "randomNumber": (await statement.fetchrow(id_))[1]} for id_ in ids]


@app.get("/updates", response_model=None)
async def updates(request: Request, queries: str | None = None) -> list[dict[str, int]]:
    changes = [(id_, random_number()) for id_ in random_ids(query_count(queries))]
    async with request.state.pool.acquire() as connection:
        statement = await connection.prepare(READ_WORLD)
        for id_, _ in changes:
            await statement.fetchrow(id_)
        await connection.executemany(WRITE_WORLD, changes)
    return [{"id": id_, "randomNumber": number} for id_, number in changes]


@app.get("/fortunes", response_class=HTMLResponse)
async def fortunes(request: Request) -> HTMLResponse:
    async with request.state.pool.acquire() as connection:
        rows = await connection.fetch(READ_FORTUNES)
    return HTMLResponse(render_fortunes(rows))
