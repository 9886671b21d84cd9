"""svc, the fast path: `uvicorn bench.techempower.svc_fast:app --no-server-header`, or
`SERVICE=bench.techempower.svc_fast:service python -m svc serve`.

Built as svc's README teaches: `Route`s in a `Service`, msgspec Structs as JSON (`json_response`),
`html_response` for the HTML page, queries on the fast path (`database(request).connection()`: the pool's
asyncpg connection). Every response carries what svc's edge adds (request id, security headers, `Server-Timing`, metrics, the access line when on)
plus a `Server` header of its own: `python -m svc serve` turns uvicorn's off, and TechEmpower wants one.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from bench.techempower.common import (
    READ_FORTUNES,
    READ_WORLD,
    WRITE_WORLD,
    query_count,
    random_id,
    random_ids,
    random_number,
    render_fortunes,
)
from svc import database, html_response
from svc.app import lazy_app
from svc.http.responses import Encoded, json_response
from svc.http.routing import Route
from svc.service import Service

#: TechEmpower requires a `Server` header; svc leaves it to the service (uvicorn's is off under `svc serve`).
SERVER = ((b"server", b"svc"),)


class Message(msgspec.Struct):
    message: str


class World(msgspec.Struct):
    id: int
    randomNumber: int  # noqa: N815 - TechEmpower's field name


class Queries(msgspec.Struct):
    """`queries`: rows to read, clamped to 1..500; missing, empty, 0 or not a number is 1 (never a 422)."""

    queries: str | None = None


async def json(request: Request) -> Encoded:
    return json_response(Message("Hello, World!"), headers=SERVER)


async def db(request: Request) -> Encoded:
    async with database(request).connection() as conn:
        row = await conn.fetchrow(READ_WORLD, random_id())
    return json_response(World(row[0], row[1]), headers=SERVER)


async def queries(request: Request) -> Encoded:
    ids = random_ids(query_count(request.query_params.get("queries")))
    async with database(request).connection() as conn:
        worlds = [World(id_, (await conn.fetchrow(READ_WORLD, id_))[1]) for id_ in ids]
    return json_response(worlds, headers=SERVER)


async def updates(request: Request) -> Encoded:
    worlds = [World(id_, random_number()) for id_ in random_ids(query_count(request.query_params.get("queries")))]
    async with database(request).connection() as conn:
        for world in worlds:
            await conn.fetchrow(READ_WORLD, world.id)
        # One pipelined batch, atomic even in autocommit; ids ascending, so concurrent batches never deadlock.
        await conn.executemany(WRITE_WORLD, [(world.id, world.randomNumber) for world in worlds])
    return json_response(worlds, headers=SERVER)


async def fortunes(request: Request) -> Encoded:
    async with database(request).connection() as conn:
        rows = await conn.fetch(READ_FORTUNES)
    return html_response(render_fortunes(rows), headers=SERVER)


service = Service(
    routes=[
        Route("/json", json, responses={200: Message}),
        Route("/db", db, responses={200: World}),
        Route("/queries", queries, query=Queries, responses={200: list[World]}),
        Route("/updates", updates, query=Queries, responses={200: list[World]}),
        Route("/fortunes", fortunes),
    ]
)

__getattr__ = lazy_app(service="bench.techempower.svc_fast:service")
