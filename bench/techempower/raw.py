"""The limit: a raw ASGI callable on a raw asyncpg pool, no framework (`uvicorn bench.techempower.raw:app`).

uvicorn adds `Server` and `Date`; this adds only `Content-Type` and `Content-Length`. JSON is msgspec's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import msgspec

from bench.techempower.common import (
    READ_FORTUNES,
    READ_WORLD,
    WRITE_WORLD,
    benchmark_database,
    create_pool,
    query_count_from,
    random_id,
    random_ids,
    random_number,
    render_fortunes,
)

Send = Callable[[dict[str, Any]], Awaitable[None]]

_encode = msgspec.json.Encoder().encode
_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"
_pool: Any = None


async def _respond(send: Send, body: bytes, content_type: bytes = _JSON, status: int = 200) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def json(scope: dict[str, Any], send: Send) -> None:
    await _respond(send, _encode({"message": "Hello, World!"}))


async def db(scope: dict[str, Any], send: Send) -> None:
    async with _pool.acquire() as connection:
        row = await connection.fetchrow(READ_WORLD, random_id())
    await _respond(send, _encode({"id": row[0], "randomNumber": row[1]}))


async def queries(scope: dict[str, Any], send: Send) -> None:
    ids = random_ids(query_count_from(scope["query_string"]))
    async with _pool.acquire() as connection:
        statement = await connection.prepare(READ_WORLD)
        worlds = [{"id": id_, "randomNumber": (await statement.fetchrow(id_))[1]} for id_ in ids]
    await _respond(send, _encode(worlds))


async def updates(scope: dict[str, Any], send: Send) -> None:
    changes = [(id_, random_number()) for id_ in random_ids(query_count_from(scope["query_string"]))]
    async with _pool.acquire() as connection:
        statement = await connection.prepare(READ_WORLD)
        for id_, _ in changes:
            await statement.fetchrow(id_)
        await connection.executemany(WRITE_WORLD, changes)
    await _respond(send, _encode([{"id": id_, "randomNumber": number} for id_, number in changes]))


async def fortunes(scope: dict[str, Any], send: Send) -> None:
    async with _pool.acquire() as connection:
        rows = await connection.fetch(READ_FORTUNES)
    await _respond(send, render_fortunes(rows).encode(), _HTML)


async def not_found(scope: dict[str, Any], send: Send) -> None:
    await _respond(send, b"Not Found", b"text/plain", 404)


ROUTES = {"/json": json, "/db": db, "/queries": queries, "/updates": updates, "/fortunes": fortunes}


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    if scope["type"] == "http":
        await ROUTES.get(scope["path"], not_found)(scope, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def _lifespan(receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    global _pool
    async with AsyncExitStack() as stack:
        await receive()  # lifespan.startup
        try:
            url = await stack.enter_async_context(benchmark_database())
            _pool = await create_pool(url)
            stack.push_async_callback(_pool.close)
        except (OSError, RuntimeError, asyncpg.PostgresError) as exc:  # unreachable, refused, no DATABASE_URL
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})
