"""`python -m bench.techempower setup`: World (10,000 rows) and Fortune (TechEmpower's 12) in the schema `techempower`."""

from __future__ import annotations

from typing import Any

from bench.techempower.common import SCHEMA, WORLD_ROWS, asyncpg_dsn

#: TechEmpower's fortunes, verbatim (row 11 must be escaped, row 12 is UTF-8).
FORTUNES: tuple[tuple[int, str], ...] = (
    (1, "fortune: No such file or directory"),
    (2, "A computer scientist is someone who fixes things that aren't broken."),
    (3, "After enough decimal places, nobody gives a damn."),
    (4, "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1"),
    (5, "A computer program does what you tell it to do, not what you want it to do."),
    (6, "Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen"),
    (7, "Any program that runs right is obsolete."),
    (8, "A list is only as strong as its weakest link. — Donald Knuth"),
    (9, "Feature: A bug with seniority."),
    (10, "Computers make very fast, very accurate mistakes."),
    (11, '<script>alert("This should not be displayed in a browser alert box.");</script>'),
    (12, "フレームワークのベンチマーク"),
)

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
DROP TABLE IF EXISTS {SCHEMA}.world, {SCHEMA}.fortune;
CREATE TABLE {SCHEMA}.world (id integer PRIMARY KEY, randomnumber integer NOT NULL);
CREATE TABLE {SCHEMA}.fortune (id integer PRIMARY KEY, message varchar(2048) NOT NULL);
INSERT INTO {SCHEMA}.world (id, randomnumber)
    SELECT i, floor(random() * {WORLD_ROWS} + 1)::integer FROM generate_series(1, {WORLD_ROWS}) AS i;
"""


async def create_tables(url: str) -> None:
    """(Re)create and fill both tables at `url`, in one transaction (concurrent runs wait for each other)."""
    import asyncpg

    connection: Any = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", SCHEMA)
            await connection.execute(_DDL)
            await connection.executemany(f"INSERT INTO {SCHEMA}.fortune (id, message) VALUES ($1, $2)", FORTUNES)
        await connection.execute(f"ANALYZE {SCHEMA}.world; ANALYZE {SCHEMA}.fortune")
    finally:
        await connection.close()
