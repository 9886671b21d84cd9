"""Log lines: JSON or console, with the request id, through one handler."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest

from svc.access import AccessLog, flush_access_log
from svc.context import current
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
    token = current.set(("rid-42", None))
    try:
        logging.getLogger("svc.test").warning("hello %s", "world", extra={"user_count": 3})
    finally:
        current.reset(token)
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
        token = current.set(("rid-7", None))
        logging.getLogger("svc.test").info("ready")
        current.reset(token)
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


@contextlib.contextmanager
def svc_handler_alone() -> Iterator[io.TextIOWrapper]:
    """svc's handler alone on the root logger (pytest's capture set aside), writing to a text stream over bytes, as
    stderr is. Entered in the test itself: pytest adds its capture handlers after fixtures have run."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [configure_logging("INFO", "json", stream)]
    try:
        yield stream
    finally:
        flush_access_log()
        root.handlers = saved


def lines_of(stream: io.TextIOWrapper) -> list[str]:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode().splitlines()


def test_an_access_line_outside_an_event_loop_is_written_at_once() -> None:
    with svc_handler_alone() as stream:
        AccessLog(logging.getLogger("svc.access")).write("GET", "/x", route="/x", status=200, duration_us=1500, size=2)
        [line] = lines_of(stream)  # no flush_access_log() first
    assert json.loads(line)["message"] == "GET /x 200 1.500ms"


async def test_access_lines_are_written_at_the_end_of_the_loop_iteration_after_earlier_text() -> None:
    with svc_handler_alone() as stream:
        log = AccessLog(logging.getLogger("svc.access"))
        logging.getLogger("svc").warning("before")  # an ordinary record, through the text layer
        for n in range(3):
            log.write("GET", f"/p/{n}", route="/p/{n}", status=200, duration_us=n, size=0)
        assert [json.loads(line)["message"] for line in lines_of(stream)] == ["before"]
        await asyncio.sleep(0)  # the loop runs the flush it scheduled
        messages = [json.loads(line)["message"] for line in lines_of(stream)]
    assert messages == ["before", "GET /p/0 200 0.000ms", "GET /p/1 200 0.001ms", "GET /p/2 200 0.002ms"]


def test_an_access_line_keeps_non_ascii_and_quotes_in_paths_as_json() -> None:
    path = '/caf\u00e9/"q"'
    with svc_handler_alone() as stream:
        AccessLog(logging.getLogger("svc.access")).write(
            "GET", path, route="<unmatched>", status=404, duration_us=1, size=0
        )
        [line] = lines_of(stream)
    assert json.loads(line)["path"] == path


async def test_a_line_that_cannot_be_encoded_leaves_no_half_line_behind() -> None:
    with svc_handler_alone() as stream:
        log = AccessLog(logging.getLogger("svc.access"))
        log.write("GET", "/ok/1", route="/ok/{n}", status=200, duration_us=1, size=0)
        with pytest.raises(UnicodeEncodeError):  # a lone surrogate has no UTF-8
            log.write("GET", "/bad/\udc80", route="<unmatched>", status=404, duration_us=1, size=0)
        log.write("GET", "/ok/2", route="/ok/{n}", status=200, duration_us=1, size=0)
        await asyncio.sleep(0)
        paths = [json.loads(line)["path"] for line in lines_of(stream)]
    assert paths == ["/ok/1", "/ok/2"]
