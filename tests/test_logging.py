"""Log lines: JSON or console, with the request id, through one handler."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from svc.context import request_id
from svc.logging import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = configure_logging("INFO", "json", out)
    yield out
    logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_timestamp_level_logger_message_request_id_and_extras(stream: io.StringIO) -> None:
    token = request_id.set("rid-42")
    try:
        logging.getLogger("svc.test").warning("hello %s", "world", extra={"user_count": 3})
    finally:
        request_id.reset(token)
    [entry] = lines(stream)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "svc.test"
    assert entry["message"] == "hello world"
    assert entry["request_id"] == "rid-42"
    assert entry["user_count"] == 3
    assert str(entry["timestamp"]).endswith("Z")


def test_exceptions_are_logged_with_their_traceback(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("svc.test").exception("failed")
    [entry] = lines(stream)
    assert "ValueError: bad value" in str(entry["exception"])


@pytest.mark.parametrize("name", ["uvicorn.error", "sqlalchemy.pool", "svc"])
def test_library_loggers_go_through_the_same_handler(stream: io.StringIO, name: str) -> None:
    logging.getLogger(name).warning("from %s", name)
    assert [e["logger"] for e in lines(stream)] == [name]


def test_console_format_is_one_readable_line() -> None:
    out = io.StringIO()
    handler = configure_logging("INFO", "console", out)
    try:
        token = request_id.set("rid-7")
        logging.getLogger("svc.test").info("ready")
        request_id.reset(token)
    finally:
        logging.getLogger().removeHandler(handler)
    [line] = out.getvalue().splitlines()
    assert line.endswith("INFO     svc.test: ready [request_id=rid-7]")


def test_configuring_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", first)
    handler = configure_logging("INFO", "json", second)
    try:
        logging.getLogger("svc.test").info("once")
    finally:
        logging.getLogger().removeHandler(handler)
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
