"""What a fast-path read costs in this process's CPU, by the way its connection is borrowed.

    uv run python bench/pool_lane.py [--tasks 8] [--reads 4000] [--rounds 5]

Concurrent tasks each read one row (`SELECT $1::int`) on a borrowed connection, on uvloop:
- `lane`: `Database.connection()`, through the pool's lane (svc/pool.py);
- `checkout`: SQLAlchemy's own checkout of the same pool (`engine.raw_connection()` in its greenlet,
  then the proxy's `close()`), the way the fast path borrowed before the lane;
- `asyncpg`: asyncpg's own pool without its reset on release (the TechEmpower raw app's).
Every pool holds the same number of connections (one more than `--tasks`: nobody waits). Prints the
median over rounds of CPU µs per read. The test database is TEST_DATABASE_URL or the embedded server.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import uvloop
from harness import asyncpg_dsn, database_for_tests
from sqlalchemy.util import greenlet_spawn

from svc.db import Database
from svc.testing import settings_for_tests

QUERY = "SELECT $1::int"


async def cpu_per_read(read: Callable[[], Awaitable[Any]], tasks: int, reads: int) -> float:
    async def reader() -> None:
        for _ in range(reads // tasks):
            await read()

    start = time.process_time()
    await asyncio.gather(*(reader() for _ in range(tasks)))
    return (time.process_time() - start) / (reads // tasks * tasks) * 1e6


async def main(url: str, tasks: int, reads: int, rounds: int) -> None:
    size = tasks + 1
    db = Database(url, dataclasses.replace(settings_for_tests(url), db_pool_size=size, db_max_overflow=0))

    async def no_reset(connection: asyncpg.Connection) -> None:
        pass

    pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=size, max_size=size, reset=no_reset)

    async def lane() -> None:
        async with db.connection() as conn:
            await conn.fetchval(QUERY, 1)

    async def checkout() -> None:
        pooled = await greenlet_spawn(db.sync_engine.raw_connection)
        try:
            await pooled.driver_connection.fetchval(QUERY, 1)
        finally:
            pooled.close()

    async def raw() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval(QUERY, 1)

    ways = {"lane": lane, "checkout": checkout, "asyncpg": raw}
    try:
        for read in ways.values():  # connections opened, statements prepared
            await cpu_per_read(read, tasks, tasks * 20)
        results: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, read in ways.items():
                results[name].append(await cpu_per_read(read, tasks, reads))
    finally:
        await pool.close()
        await db.dispose()
    print(f"CPU µs per read, {tasks} tasks, median of {rounds} rounds of {reads} reads:")
    for name, values in results.items():
        print(f"  {name:9} {statistics.median(values):7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with database_for_tests() as database_url:
        uvloop.run(main(database_url, args.tasks, args.reads, args.rounds))
