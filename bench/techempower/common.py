"""What every TechEmpower app here shares: the rules (the `queries` parameter, random ids, the fortunes page),
the SQL, and where the benchmark database is.

Sharing these keeps the comparison about the frameworks: every app parses, picks rows and renders the same way.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from html import escape
from operator import itemgetter
from pathlib import Path
from typing import Any

#: The schema holding World and Fortune, in whatever database DATABASE_URL names: never svc's own tables.
SCHEMA = "techempower"
WORLD_ROWS = 10_000
MAX_QUERIES = 500

READ_WORLD = f"SELECT id, randomnumber FROM {SCHEMA}.world WHERE id = $1"
WRITE_WORLD = f"UPDATE {SCHEMA}.world SET randomnumber = $2 WHERE id = $1"
READ_FORTUNES = f"SELECT id, message FROM {SCHEMA}.fortune"

ADDITIONAL_FORTUNE = "Additional fortune added at request time."
HTML_TYPE = "text/html; charset=utf-8"
_PAGE_HEAD = (
    "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>"
)
_PAGE_TAIL = "</table></body></html>"

#: Connections per app (each reference's pool, svc's DB_POOL_SIZE with no overflow in the load script).
POOL_SIZE = int(os.environ.get("TECHEMPOWER_POOL_SIZE", "10"))


def query_count(value: str | bytes | None) -> int:
    """TechEmpower's `queries`: an integer clamped to 1..500; missing, empty, 0 or not a number is 1."""
    try:
        count = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1
    return min(max(count, 1), MAX_QUERIES)


def query_count_from(query_string: bytes) -> int:
    """`query_count` of the first `queries=` parameter in a raw query string (for apps that parse it themselves)."""
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"queries":
            return query_count(value)
    return 1


def random_id() -> int:
    return random.randint(1, WORLD_ROWS)


def random_ids(count: int) -> list[int]:
    """`count` distinct random row ids, ascending: concurrent batched updates then lock rows in one order (no deadlocks)."""
    return sorted(random.sample(range(1, WORLD_ROWS + 1), count))


def random_number() -> int:
    return random.randint(1, WORLD_ROWS)


def render_fortunes(rows: Iterable[tuple[int, str]]) -> str:
    """The fortunes page: `rows` plus the one added at request time, sorted by message, messages HTML-escaped."""
    fortunes = [*rows, (0, ADDITIONAL_FORTUNE)]
    fortunes.sort(key=itemgetter(1))
    cells = "".join(f"<tr><td>{id_}</td><td>{escape(message)}</td></tr>" for id_, message in fortunes)
    return _PAGE_HEAD + cells + _PAGE_TAIL


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy-style `postgresql+asyncpg://` URL as `asyncpg.connect()` takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _settings(url: str | None) -> Any:
    from svc.settings import Settings, normalise_database_url

    url = url or os.environ.get("DATABASE_URL") or None
    return Settings(
        database_url=normalise_database_url(url) if url else None,
        embedded_pg_dir=Path(os.environ.get("EMBEDDED_PG_DIR", ".data/postgres")),
    )


@asynccontextmanager
async def benchmark_database(url: str | None = None) -> AsyncIterator[str]:
    """The benchmark database's URL (`postgresql+asyncpg://`) for the block: `url`, else DATABASE_URL, else the
    embedded PostgreSQL 18 in EMBEDDED_PG_DIR (default `.data/postgres`), found or started as svc finds it."""
    from svc.postgres import database_url

    async with database_url(_settings(url)) as found:
        yield found


@contextmanager
def held_database(url: str | None = None) -> Iterator[str]:
    """`benchmark_database` for blocking code: the embedded server (when it is the one) is held for the whole block."""
    settings = _settings(url)
    if settings.database_url is not None:
        yield settings.database_url
        return
    from svc.embedded import EmbeddedPostgres
    from svc.settings import normalise_database_url

    embedded = EmbeddedPostgres(settings.embedded_pg_dir)
    try:
        yield normalise_database_url(embedded.start())
    finally:
        embedded.stop()


async def create_pool(dsn: str) -> Any:
    """The asyncpg pool of the reference apps: `POOL_SIZE` connections, opened at start-up.

    No reset on release: these apps never change session state, so asyncpg's reset (a round trip per
    request) would only be overhead; every reference is then exactly one round trip per query.
    """
    import asyncpg

    async def no_reset(connection: Any) -> None:
        """Nothing to reset (see above)."""

    return await asyncpg.create_pool(asyncpg_dsn(dsn), min_size=POOL_SIZE, max_size=POOL_SIZE, reset=no_reset)
