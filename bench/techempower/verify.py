"""The verifier: an app's answers against TechEmpower's rules, over HTTP (uvicorn adds `Date`, and the
headers on the wire are what counts), with the database read back to check what `/db`, `/queries`
and `/updates` say.

`await verify(base_url, database_url)` is the list of failures, empty when every rule holds.
"""

from __future__ import annotations

import html
import re
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from bench.techempower.common import ADDITIONAL_FORTUNE, MAX_QUERIES, SCHEMA, WORLD_ROWS, asyncpg_dsn
from bench.techempower.setup import FORTUNES

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"

#: `queries` values and the row count each must give (TechEmpower's clamping).
CLAMPING = (("20", 20), (None, 1), ("", 1), ("0", 1), ("-3", 1), ("foo", 1), ("501", MAX_QUERIES))

PAGE_HEAD = "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>"
PAGE_TAIL = "</table></body></html>"
_ROW = re.compile(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>")
_BETWEEN_TAGS = re.compile(r">\s+<")
#: The fortunes in the order the page must list them (Python's order of the messages: by code point).
EXPECTED_FORTUNES = sorted([*FORTUNES, (0, ADDITIONAL_FORTUNE)], key=lambda row: row[1])


def _path(test: str, queries: str | None) -> str:
    return test if queries is None else f"{test}?queries={queries}"


class Verifier:
    """The checks of one app; `failures` collects what broke, each prefixed by its request."""

    def __init__(self, client: httpx.AsyncClient, database: Any) -> None:
        self.client = client
        self.database = database
        self.failures: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.failures.append(f"{path}: {message}")

    async def get(self, path: str, content_type: str) -> httpx.Response | None:
        """GET `path` with the headers every response must carry checked; None when it cannot be checked further."""
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            self.fail(path, f"no response ({type(exc).__name__}: {exc})")
            return None
        if response.status_code != 200:
            self.fail(path, f"status {response.status_code}, not 200: {response.text[:200]!r}")
            return None
        headers = response.headers
        if headers.get_list("content-type") != [content_type]:
            self.fail(path, f"Content-Type {headers.get_list('content-type')}, not [{content_type!r}]")
        if headers.get_list("content-length") != [str(len(response.content))]:
            self.fail(path, f"Content-Length {headers.get_list('content-length')}, body {len(response.content)} bytes")
        servers = headers.get_list("server")
        if len(servers) != 1 or not servers[0].strip():
            self.fail(path, f"needs exactly one non-empty Server header, got {servers}")
        dates = headers.get_list("date")
        if len(dates) != 1:
            self.fail(path, f"needs exactly one Date header, got {dates}")
        else:
            try:
                parsedate_to_datetime(dates[0])
            except (TypeError, ValueError):
                self.fail(path, f"Date {dates[0]!r} is not an HTTP date")
        return response

    def body(self, path: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            self.fail(path, f"body is not JSON: {response.text[:200]!r}")
            return None

    def worlds(self, path: str, value: Any, count: int) -> list[tuple[int, int]]:
        """`value` as a list of `count` World objects, as (id, randomNumber); what is wrong with it is a failure."""
        if not isinstance(value, list):
            self.fail(path, f"not a JSON array: {value!r:.200}")
            return []
        if len(value) != count:
            self.fail(path, f"{len(value)} rows, not {count}")
        return [world for item in value if (world := self.world(path, item)) is not None]

    def world(self, path: str, item: Any) -> tuple[int, int] | None:
        if not isinstance(item, dict) or set(item) != {"id", "randomNumber"}:
            self.fail(path, f"not a World object {{id, randomNumber}}: {item!r:.200}")
            return None
        id_, number = item["id"], item["randomNumber"]
        for name, field in (("id", id_), ("randomNumber", number)):
            if type(field) is not int or not 1 <= field <= WORLD_ROWS:
                self.fail(path, f"{name} {field!r} is not an integer in 1..{WORLD_ROWS}")
                return None
        return id_, number

    async def stored(self, ids: list[int]) -> dict[int, int]:
        rows = await self.database.fetch(f"SELECT id, randomnumber FROM {SCHEMA}.world WHERE id = ANY($1)", ids)
        return {row[0]: row[1] for row in rows}

    async def matches_database(self, path: str, worlds: list[tuple[int, int]]) -> None:
        stored = await self.stored([id_ for id_, _ in worlds])
        wrong = [(id_, number, stored.get(id_)) for id_, number in worlds if stored.get(id_) != number]
        if wrong:
            self.fail(path, f"{len(wrong)} rows differ from the database (id, sent, stored): {wrong[:3]}")

    async def json(self) -> None:
        response = await self.get("/json", JSON_TYPE)
        if response is not None and (body := self.body("/json", response)) != {"message": "Hello, World!"}:
            self.fail("/json", f'body {body!r}, not {{"message": "Hello, World!"}}')

    async def db(self) -> None:
        if (response := await self.get("/db", JSON_TYPE)) is not None:
            body = self.body("/db", response)
            if isinstance(body, list):
                self.fail("/db", "body is an array, not one World object")
            elif (world := self.world("/db", body)) is not None:
                await self.matches_database("/db", [world])

    async def queries(self) -> None:
        for queries, count in CLAMPING:
            path = _path("/queries", queries)
            if (response := await self.get(path, JSON_TYPE)) is not None:
                await self.matches_database(path, self.worlds(path, self.body(path, response), count))

    async def updates(self) -> None:
        for queries, count in CLAMPING:
            path = _path("/updates", queries)
            before = await self.stored(list(range(1, WORLD_ROWS + 1)))
            if (response := await self.get(path, JSON_TYPE)) is None:
                continue
            worlds = self.worlds(path, self.body(path, response), count)
            # What was sent is what is stored (the last value sent for an id, should one repeat).
            await self.matches_database(path, list(dict(worlds).items()))
            after = await self.stored(list(range(1, WORLD_ROWS + 1)))
            changed = {id_ for id_ in after if after[id_] != before.get(id_)}
            if changed - {id_ for id_, _ in worlds}:
                self.fail(path, f"rows it did not return changed: {sorted(changed)[:5]}")
            # 20 or more new random numbers all equal to the old ones would be a 1 in 10^80 chance: nothing was written.
            if count >= 20 and not changed:
                self.fail(path, f"no row changed in the database after {count} updates")

    async def fortunes(self) -> None:
        if (response := await self.get("/fortunes", HTML_TYPE)) is None:
            return
        try:
            page = response.content.decode()
        except UnicodeDecodeError:
            self.fail("/fortunes", "body is not UTF-8")
            return
        page = _BETWEEN_TAGS.sub("><", page.strip())
        rows = _ROW.findall(page)
        if page != PAGE_HEAD + "".join(f"<tr><td>{i}</td><td>{m}</td></tr>" for i, m in rows) + PAGE_TAIL:
            self.fail(
                "/fortunes",
                f"not TechEmpower's page (doctype, title, table, header row, cells; or a raw '<'): {page[:300]!r}",
            )
            return
        unescaped = [(int(i) if i.isdigit() else i, html.unescape(m)) for i, m in rows]
        if sorted(unescaped, key=str) != sorted(EXPECTED_FORTUNES, key=str):
            self.fail("/fortunes", f"rows are not the 12 fortunes plus id 0 ({ADDITIONAL_FORTUNE!r}): {unescaped}")
        elif unescaped != EXPECTED_FORTUNES:
            self.fail("/fortunes", f"rows not sorted by message: ids {[i for i, _ in unescaped]}")
        if any('"' in m or ">" in m for _, m in rows):  # `<` cannot be there: _ROW stops at it
            self.fail("/fortunes", "messages not HTML-escaped (a raw '\"' or '>')")


async def verify(base_url: str, database_url: str, transport: httpx.AsyncBaseTransport | None = None) -> list[str]:
    """Every rule checked against the app at `base_url`, on the database at `database_url`; the failures.

    `transport` replaces the network (the verifier's own tests call an app in-process).
    """
    import asyncpg

    database = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0, transport=transport) as client:
            verifier = Verifier(client, database)
            for check in (verifier.json, verifier.db, verifier.queries, verifier.updates, verifier.fortunes):
                await check()
    finally:
        await database.close()
    return verifier.failures
