"""svc, the ORM path: `uvicorn bench.techempower.svc_orm:app --no-server-header`.

As svc's README teaches a user: SQLAlchemy ORM models (`bench/techempower/models.py`), one
`database(request).session()` per request (a transaction; `autocommit=True` for the reads: no
BEGIN/COMMIT around them), msgspec Structs out.
"""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request

from bench.techempower.common import HTML_TYPE, query_count, random_id, random_ids, random_number, render_fortunes
from bench.techempower.models import Fortune
from bench.techempower.models import World as WorldRow
from bench.techempower.svc_fast import SERVER, Message, Queries, World
from svc import database
from svc.app import lazy_app
from svc.http.responses import Encoded, json_response
from svc.http.routing import Route
from svc.service import Service

_HTML = HTML_TYPE.encode()


async def json(request: Request) -> Encoded:
    return json_response(Message("Hello, World!"), headers=SERVER)


async def db(request: Request) -> Encoded:
    async with database(request).session(autocommit=True) as session:  # a read: no BEGIN/COMMIT
        world = await session.get_one(WorldRow, random_id())
    return json_response(World(world.id, world.randomnumber), headers=SERVER)


async def queries(request: Request) -> Encoded:
    ids = random_ids(query_count(request.query_params.get("queries")))
    async with database(request).session(autocommit=True) as session:
        worlds = [await session.get_one(WorldRow, id_) for id_ in ids]
    return json_response([World(world.id, world.randomnumber) for world in worlds], headers=SERVER)


async def updates(request: Request) -> Encoded:
    ids = random_ids(query_count(request.query_params.get("queries")))
    async with database(request).session() as session:
        worlds = [await session.get_one(WorldRow, id_) for id_ in ids]
        for world in worlds:
            world.randomnumber = random_number()
    # Committed (one batched UPDATE at flush) when the block ended.
    return json_response([World(world.id, world.randomnumber) for world in worlds], headers=SERVER)


async def fortunes(request: Request) -> Encoded:
    async with database(request).session(autocommit=True) as session:
        rows = (await session.execute(select(Fortune.id, Fortune.message))).all()
    page = render_fortunes((row.id, row.message) for row in rows)
    return Encoded(page.encode(), headers=SERVER, content_type=_HTML)


service = Service(
    routes=[
        Route("/json", json, responses={200: Message}),
        Route("/db", db, responses={200: World}),
        Route("/queries", queries, query=Queries, responses={200: list[World]}),
        Route("/updates", updates, query=Queries, responses={200: list[World]}),
        Route("/fortunes", fortunes),
    ]
)

__getattr__ = lazy_app(service="bench.techempower.svc_orm:service")
