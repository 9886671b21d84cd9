"""UUIDv7 (RFC 9562) in Python, and the server-side default for migrations, on the real server's version."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, Table, Text, Uuid, insert
from sqlalchemy.schema import CreateTable

import svc.ids
from svc.db import Database
from svc.ids import uuid7, uuid_server_default
from svc.settings import Settings

RFC_9562_VARIANT = uuid.RFC_4122  # the variant bits 10: RFC 9562 kept RFC 4122's


def unix_ms(value: uuid.UUID) -> int:
    return value.int >> 80


def test_uuid7_has_version_7_and_the_rfc_variant() -> None:
    for value in (uuid7() for _ in range(1000)):
        assert value.version == 7
        assert value.variant == RFC_9562_VARIANT
        assert str(value)[14] == "7"
        assert str(value)[19] in "89ab"


def test_uuid7_timestamp_is_now_in_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= unix_ms(value) <= after


def test_uuid7_is_strictly_increasing_over_100k_calls() -> None:
    values = [uuid7() for _ in range(100_000)]
    ints = [v.int for v in values]
    assert all(a < b for a, b in itertools.pairwise(ints))
    # The order holds for the text form too (what databases and logs sort).
    texts = [str(v) for v in values]
    assert texts == sorted(texts)
    assert len({i & 0xFFFF_FFFF for i in ints}) > 99_000  # the random tail is random


def test_uuid7_is_strictly_increasing_across_threads() -> None:
    per_thread: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(out: list[uuid.UUID]) -> None:
        out.extend(uuid7() for _ in range(10_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [v for out in per_thread for v in out]
    assert len(set(everything)) == len(everything)
    for out in per_thread:
        ints = [v.int for v in out]
        assert all(a < b for a, b in itertools.pairwise(ints))


@pytest.fixture
def generator_state(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Restores the generator's last millisecond and counter after a test that bends the clock."""
    monkeypatch.setattr(svc.ids, "_last_ms", svc.ids._last_ms)
    monkeypatch.setattr(svc.ids, "_counter", svc.ids._counter)
    return monkeypatch


def test_uuid7_stays_increasing_when_the_clock_goes_back(generator_state: pytest.MonkeyPatch) -> None:
    monkeypatch = generator_state
    first = uuid7()
    earlier = (unix_ms(first) - 5_000) * 1_000_000
    monkeypatch.setattr(svc.ids.time, "time_ns", lambda: earlier)
    later = [uuid7() for _ in range(100)]
    assert all(a < b for a, b in zip([first, *later], later, strict=False))
    assert {unix_ms(v) for v in later} == {unix_ms(first)}


def test_uuid7_borrows_the_next_millisecond_when_the_counter_is_exhausted(
    generator_state: pytest.MonkeyPatch,
) -> None:
    monkeypatch = generator_state
    frozen = time.time_ns() + 10_000_000_000  # ahead of anything made so far
    monkeypatch.setattr(svc.ids.time, "time_ns", lambda: frozen)
    first = uuid7()
    monkeypatch.setattr(svc.ids, "_counter", svc.ids._COUNTER_MAX)  # as if 2**42 ids were made this millisecond
    second, third = uuid7(), uuid7()
    assert first < second < third
    assert unix_ms(second) == unix_ms(first) + 1
    assert second.version == third.version == 7


# -- the server-side default -------------------------------------------------------------------------------------------


@pytest.fixture
async def database(database_url: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Database]:
    db = Database(database_url, make_settings())
    try:
        yield db
    finally:
        await db.dispose()


async def test_uuid_server_default_uses_uuidv7_from_postgresql_18_and_gen_random_uuid_before(
    database: Database, pg: Any
) -> None:
    server_major = int(await pg.fetchval("SHOW server_version_num")) // 10_000
    async with database.engine.connect() as conn:
        default = await conn.run_sync(uuid_server_default)
        assert default.text == ("uuidv7()" if server_major >= 18 else "gen_random_uuid()")
        table = Table(
            "svc_ids_test",
            MetaData(),
            Column("id", Uuid, primary_key=True, server_default=default),
            Column("name", Text),
            prefixes=["TEMPORARY"],
        )
        ddl = str(CreateTable(table).compile(conn.sync_engine))
        assert default.text in ddl
        await conn.run_sync(table.create)
        before = time.time_ns() // 1_000_000
        ids = [
            (await conn.execute(insert(table).values(name=str(n)).returning(table.c.id))).scalar_one()
            for n in range(20)
        ]
        after = time.time_ns() // 1_000_000
        await conn.rollback()
    assert all(isinstance(value, uuid.UUID) for value in ids)
    assert len(set(ids)) == len(ids)
    assert {value.variant for value in ids} == {RFC_9562_VARIANT}
    if server_major >= 18:
        assert {value.version for value in ids} == {7}
        assert ids == sorted(ids)  # time-ordered (PostgreSQL 18 keeps them monotonic per backend)
        assert all(before - 1000 <= unix_ms(value) <= after + 1000 for value in ids)
    else:
        assert {value.version for value in ids} == {4}


def test_uuid_server_default_reads_the_version_the_dialect_detected() -> None:
    class Bind:
        class dialect:  # noqa: N801 - mimics a SQLAlchemy connection's attribute
            server_version_info: tuple[int, ...] | None = None

    for version, expected in [((18, 0), "uuidv7()"), ((19, 2), "uuidv7()"), ((17, 6), "gen_random_uuid()")]:
        Bind.dialect.server_version_info = version
        assert uuid_server_default(Bind()).text == expected
