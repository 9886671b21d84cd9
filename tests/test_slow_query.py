"""The slow-statement log: real `pg_sleep` statements over `DB_SLOW_QUERY_MS`, at WARNING, without parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from svc.app import create_app
from svc.dblog import MAX_STATEMENT_CHARS
from svc.errors import DatabaseUnavailable
from svc.settings import Settings
from tests.conftest import serve

SECRET_PARAMETER = "parameter-value-never-logged"


async def sleep(request: Request) -> Response:
    """Runs `SELECT pg_sleep(?seconds)` with a parameter that must not reach the log."""
    seconds = float(request.query_params["seconds"])
    padding = "x" * int(request.query_params.get("padding", "0"))
    async with request.app.runtime.database().session() as session:
        await session.execute(
            text(f"SELECT pg_sleep(:seconds), CAST(:secret AS text) AS /* {padding} */ label"),
            {"seconds": seconds, "secret": SECRET_PARAMETER},
        )
    return PlainTextResponse("slept")


def slow_lines(err: str) -> list[dict[str, Any]]:
    """The slow-statement lines of the `/sleep` route's statement.

    Not any other's: with thresholds this low, a start-up query on a busy machine may be slow too.
    """
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in entries if e["logger"] == "svc.db.slow" and "pg_sleep" in e["statement"]]


async def run(settings: Settings, path: str) -> tuple[int, str]:
    async with serve(create_app(settings, routes=[Route("/sleep", sleep)])) as client:
        response = await client.get(path, headers={"X-Request-ID": "slow-1"})
    return response.status_code, response.text


async def test_a_statement_over_the_threshold_is_logged_with_duration_text_and_request_id(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = await run(make_settings(db_slow_query_ms=150), "/sleep?seconds=0.3")
    err = capsys.readouterr().err
    assert status == 200
    [entry] = slow_lines(err)
    assert entry["level"] == "WARNING"
    assert entry["duration_ms"] >= 300
    assert entry["statement"].startswith("SELECT pg_sleep($1), CAST($2 AS text)")
    assert entry["request_id"] == "slow-1"
    assert entry["failed"] is False
    assert SECRET_PARAMETER not in err


async def test_statements_under_the_threshold_are_not_logged(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = await run(make_settings(db_slow_query_ms=1000), "/sleep?seconds=0.05")
    assert status == 200
    assert slow_lines(capsys.readouterr().err) == []


async def test_long_statements_are_cut_to_one_line_of_bounded_length(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = await run(make_settings(db_slow_query_ms=50), "/sleep?seconds=0.1&padding=5000")
    assert status == 200
    [entry] = slow_lines(capsys.readouterr().err)
    assert len(entry["statement"]) == MAX_STATEMENT_CHARS
    assert entry["statement"].endswith("…")
    assert "\n" not in entry["statement"]


async def test_a_statement_cancelled_by_the_command_timeout_is_logged_as_failed(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(db_slow_query_ms=100, db_command_timeout=0.3)
    status, body = await run(settings, "/sleep?seconds=5")
    err = capsys.readouterr().err
    assert status == DatabaseUnavailable.status
    [entry] = slow_lines(err)
    assert entry["failed"] is True
    assert 300 <= entry["duration_ms"] < 5000
    assert SECRET_PARAMETER not in err + body


async def fast_sleep(request: Request) -> Response:
    """`/sleep` on the fast path."""
    async with request.app.runtime.database().connection() as conn:
        await conn.fetchval(
            "SELECT pg_sleep($1), CAST($2 AS text) AS label", float(request.query_params["seconds"]), SECRET_PARAMETER
        )
    return PlainTextResponse("slept")


async def test_the_fast_path_logs_slow_statements_in_the_same_shape(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(make_settings(db_slow_query_ms=150), routes=[Route("/sleep", fast_sleep)])
    async with serve(app) as client:
        fast = await client.get("/sleep?seconds=0.3", headers={"X-Request-ID": "slow-fast"})
        quick = await client.get("/sleep?seconds=0")
    err = capsys.readouterr().err
    assert (fast.status_code, quick.status_code) == (200, 200)
    [entry] = slow_lines(err)
    assert entry["level"] == "WARNING"
    assert entry["duration_ms"] >= 300
    assert entry["statement"] == "SELECT pg_sleep($1), CAST($2 AS text) AS label"
    assert entry["request_id"] == "slow-fast"
    assert entry["failed"] is False
    assert SECRET_PARAMETER not in err
