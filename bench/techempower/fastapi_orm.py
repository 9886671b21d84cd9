"""FastAPI with the SQLAlchemy async ORM and pydantic models: the stack the seed started from
(`uvicorn bench.techempower.fastapi_orm:app`). A session per request from a dependency (committed on return), `response_model`s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.techempower.common import (
    POOL_SIZE,
    benchmark_database,
    query_count,
    random_id,
    random_ids,
    random_number,
    render_fortunes,
)
from bench.techempower.models import Fortune, World


class WorldOut(BaseModel):
    id: int
    randomNumber: int  # noqa: N815 - TechEmpower's field name


class Message(BaseModel):
    message: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with benchmark_database() as url:
        engine = create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0)
        try:
            yield {"sessions": async_sessionmaker(engine, expire_on_commit=False)}
        finally:
            await engine.dispose()


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.state.sessions() as session, session.begin():
        yield session


# scope="function": committed when the endpoint returns, before the response is sent (a client reading the
# rows back after its answer finds them written).
Session = Annotated[AsyncSession, Depends(session, scope="function")]
app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.get("/json", response_model=Message)
async def json() -> Message:
    return Message(message="Hello, World!")


@app.get("/db", response_model=WorldOut)
async def db(session: Session) -> WorldOut:
    world = await session.get(World, random_id())
    assert world is not None
    return WorldOut(id=world.id, randomNumber=world.randomnumber)


@app.get("/queries", response_model=list[WorldOut])
async def queries(session: Session, queries: str | None = None) -> list[WorldOut]:
    worlds = []
    for id_ in random_ids(query_count(queries)):
        world = await session.get(World, id_)
        assert world is not None
        worlds.append(WorldOut(id=world.id, randomNumber=world.randomnumber))
    return worlds


@app.get("/updates", response_model=list[WorldOut])
async def updates(session: Session, queries: str | None = None) -> list[WorldOut]:
    worlds = []
    for id_ in random_ids(query_count(queries)):
        world = await session.get(World, id_)
        assert world is not None
        world.randomnumber = random_number()
        worlds.append(WorldOut(id=world.id, randomNumber=world.randomnumber))
    return worlds


@app.get("/fortunes", response_class=HTMLResponse)
async def fortunes(session: Session) -> HTMLResponse:
    rows = (await session.execute(select(Fortune.id, Fortune.message))).all()
    return HTMLResponse(render_fortunes((row.id, row.message) for row in rows))
