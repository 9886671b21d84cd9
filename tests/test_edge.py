"""The edge: request ids, security headers, the last-resort 500 and the access log, on every response."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from starlette.routing import Route as StarletteRoute
from starlette.types import Message, Receive, Scope, Send

import svc
from svc.access import flush_access_log
from svc.app import create_app
from svc.health import Health
from svc.http.request_id import new_request_id
from svc.logging import configure_logging
from svc.settings import Environment, Settings
from tests.conftest import serve

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
ISO_UTC_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PATHS = ["/health", "/health/live", "/nope"]


@pytest.mark.parametrize("request_id", ["abc", "trace:1.2-3_4", "A" * 128])
async def test_a_well_formed_inbound_request_id_is_echoed(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize("request_id", ["", "has space", "semi;colon", "A" * 129, "é", "<script>"])
async def test_a_malformed_inbound_request_id_is_replaced(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": request_id.encode()})
    assert GENERATED_ID.match(response.headers["x-request-id"])


async def test_each_request_without_an_id_gets_a_new_one(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED_ID.match(i) for i in ids)


@pytest.mark.parametrize("path", PATHS)
async def test_security_headers_are_on_every_response(client: httpx.AsyncClient, path: str) -> None:
    headers = (await client.get(path)).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in headers


@pytest.mark.parametrize(("app_env", "hsts"), [("test", False), ("development", False), ("production", True)])
async def test_hsts_is_sent_only_when_deployed(
    make_settings: Callable[..., Settings], app_env: str, hsts: bool
) -> None:
    settings = make_settings(app_env=Environment(app_env), secret_key="x" * 8 + "y" * 30)
    async with serve(create_app(settings)) as client:
        headers = (await client.get("/health/live")).headers
    assert ("strict-transport-security" in headers) is hsts


async def test_access_log_is_one_structured_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="svc.access")
    response = await client.get("/nope", headers={"X-Request-ID": "access-1"})
    [record] = [r for r in caplog.records if r.name == "svc.access"]
    fields = {k: getattr(record, k) for k in ("method", "path", "route", "status", "bytes", "request_id")}
    assert fields == {
        "method": "GET",
        "path": "/nope",
        "route": "<unmatched>",
        "status": 404,
        "bytes": len(response.content),
        "request_id": "access-1",
    }
    assert 0 <= record.duration_ms < 10_000  # type: ignore[attr-defined]


async def test_access_log_can_be_switched_off(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="svc.access")
    async with serve(create_app(make_settings(access_log=False))) as client:
        await client.get("/health/live")
    assert [r for r in caplog.records if r.name == "svc.access"] == []


def test_uvicorn_access_log_is_replaced_by_ours(client: httpx.AsyncClient) -> None:
    assert logging.getLogger("uvicorn.access").disabled


def test_generated_request_ids_are_128_random_bits_and_unique() -> None:
    made = [new_request_id() for _ in range(2000)]  # several batches
    ids = [rid for rid, _ in made]
    assert len(set(ids)) == len(ids)
    assert all(GENERATED_ID.match(i) for i in ids)
    assert all(header == (b"x-request-id", rid.encode()) for rid, header in made)


# --- Every route takes the same path: a declared body or a Host check changes nothing in the answer --------------------


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/health/db"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_health_answers_the_same_with_a_declared_body_and_with_a_host_check(
    make_settings: Callable[..., Settings], path: str, method: str
) -> None:
    async with serve(create_app(make_settings())) as client:
        plain = await client.request(method, path)
        with_body = await client.request(method, path, headers={"Content-Length": "0"})
    async with serve(create_app(make_settings(allowed_hosts=("testserver",)))) as checked_client:
        checked = await checked_client.request(method, path)
    for response in (with_body, checked):
        assert response.status_code == plain.status_code
        assert response.headers.keys() == plain.headers.keys()
        assert response.headers["content-type"] == plain.headers["content-type"]
        if method == "HEAD":
            assert response.content == plain.content == b""
        else:  # the same shape (the values carry times and, for a second app, its own probe's results)
            body, expected = response.json(), plain.json()
            assert body.keys() == expected.keys()
            assert body.get("checks", {}).keys() == expected.get("checks", {}).keys()


@pytest.mark.parametrize(
    "extra", [{}, {"Content-Length": "0"}, {"Host": "testserver"}], ids=["plain", "declared body", "host checked"]
)
async def test_an_error_in_a_health_endpoint_is_a_500_problem_with_the_usual_headers(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    extra: dict[str, str],
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("password=hunter2")

    monkeypatch.setattr(Health, "answer_now", broken)
    async with serve(create_app(make_settings(allowed_hosts=("testserver",)))) as client:
        response = await client.get("/health", headers=extra)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["requestId"] == response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "hunter2" not in response.text
    [logged] = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert logged.request_id == response.headers["x-request-id"]  # type: ignore[attr-defined]


async def test_a_response_cancelled_after_it_began_is_recorded_with_its_status_and_bytes(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    # As when uvicorn's graceful-shutdown timeout cancels a long response: what was sent is what is recorded.
    class Streaming:  # a plain ASGI app: it sends for itself
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"abc", "more_body": True})
            raise asyncio.CancelledError

    async def discard(message: Message) -> None:
        pass

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    app = create_app(make_settings(), routes=[StarletteRoute("/stream", Streaming())])
    scope: Scope = {"type": "http", "method": "GET", "path": "/stream", "headers": []}
    caplog.set_level(logging.INFO, logger="svc.access")
    with pytest.raises(asyncio.CancelledError):
        await app(scope, nothing, discard)
    assert app.runtime.metrics is not None
    assert list(app.runtime.metrics.series) == [("GET", "/stream", 200)]
    [line] = [r for r in caplog.records if r.name == "svc.access"]
    assert (line.status, line.bytes) == (200, 3)  # type: ignore[attr-defined]


# --- The access log line (issue 7), written without a LogRecord when svc's handler is the only destination -----------


@contextlib.contextmanager
def only_svc_handler(fmt: str) -> Iterator[io.StringIO]:
    """svc's handler alone on the root logger (as in production; pytest's capture handlers set aside), into a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = configure_logging("INFO", fmt, stream)
    root.handlers = [handler]
    try:
        yield stream
    finally:
        flush_access_log()
        root.handlers = saved


@contextlib.asynccontextmanager
async def app_logging_to(
    fmt: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[httpx.AsyncClient, io.StringIO]]:
    app = create_app(make_settings(log_format=fmt))
    async with serve(app) as client:
        with only_svc_handler(fmt) as stream:
            yield client, stream


def access_entries(stream: io.StringIO) -> list[dict[str, object]]:
    flush_access_log()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in entries if e["logger"] == "svc.access"]


@pytest.mark.parametrize(
    ("method", "path", "route", "status"),
    [
        ("GET", "/health", "/health", 200),
        ("HEAD", "/health/live", "/health/live", 200),
        ("GET", "/no/such/thing?x=1", "<unmatched>", 404),
        ("POST", "/health", "/health", 405),
    ],
)
async def test_json_access_line_carries_id_method_route_status_duration_and_bytes(
    make_settings: Callable[..., Settings], method: str, path: str, route: str, status: int
) -> None:
    async with app_logging_to("json", make_settings) as (client, stream):
        response = await client.request(method, path, headers={"X-Request-ID": "acc-42"})
        [entry] = access_entries(stream)
    assert response.status_code == status
    duration = entry.pop("duration_ms")
    assert isinstance(duration, float)
    assert 0 <= duration < 10_000
    assert ISO_UTC_MS.match(str(entry.pop("timestamp")))
    assert entry == {
        "level": "INFO",
        "logger": "svc.access",
        "message": f"{method} {path.partition('?')[0]} {status} {duration:.3f}ms",
        "request_id": "acc-42",
        "method": method,
        "path": path.partition("?")[0],
        "route": route,
        "status": status,
        "bytes": len(response.content),
        "client": "127.0.0.1",
        "user_agent": f"python-httpx/{httpx.__version__}",
    }


@pytest.mark.parametrize("path", ["/health", "/health/live", "/nope", "/openapi.json"])
async def test_a_head_request_is_recorded_with_no_body_bytes_whoever_answers(
    make_settings: Callable[..., Settings], path: str
) -> None:
    async with app_logging_to("json", make_settings) as (client, stream):
        response = await client.head(path)
        [entry] = access_entries(stream)
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0
    assert entry["bytes"] == 0


async def test_unknown_paths_share_one_route_value(make_settings: Callable[..., Settings]) -> None:
    async with app_logging_to("json", make_settings) as (client, stream):
        for n in range(5):
            await client.get(f"/random/{n}")
        entries = access_entries(stream)
    assert {e["route"] for e in entries} == {"<unmatched>"}
    assert len({e["path"] for e in entries}) == 5


async def test_console_access_line(make_settings: Callable[..., Settings]) -> None:
    async with app_logging_to("console", make_settings) as (client, stream):
        await client.get("/health/live", headers={"X-Request-ID": "acc-7"})
        flush_access_log()
        [line] = [line for line in stream.getvalue().splitlines() if "svc.access" in line]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO     svc\.access: GET /health/live 200 \d+\.\d{3}ms \[request_id=acc-7\]",
        line,
    ), line


async def test_the_access_line_makes_no_log_record_when_only_svc_handler_listens(
    make_settings: Callable[..., Settings],
) -> None:
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)  # type: ignore[arg-type]
        made.append(record.name)
        return record

    async with app_logging_to("json", make_settings) as (client, stream):
        logging.setLogRecordFactory(counting)
        try:
            for _ in range(3):
                await client.get("/health/live")
        finally:
            logging.setLogRecordFactory(factory)
        assert len(access_entries(stream)) == 3
    assert "svc.access" not in made


async def test_with_another_handler_the_access_line_is_an_ordinary_record(
    make_settings: Callable[..., Settings],
) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    async with app_logging_to("json", make_settings) as (client, stream):
        extra = Keep()
        logging.getLogger().addHandler(extra)
        try:
            await client.get("/health", headers={"X-Request-ID": "acc-9"})
        finally:
            logging.getLogger().removeHandler(extra)
        [written] = access_entries(stream)
    [record] = [r for r in records if r.name == "svc.access"]
    assert record.route == "/health"  # type: ignore[attr-defined]
    assert written["request_id"] == "acc-9"
    assert written["route"] == "/health"


@pytest.mark.parametrize(
    ("make", "content_type", "body"),
    [
        (lambda: svc.json_response({"a": [1, 2]}, 201), "application/json", b'{"a":[1,2]}'),
        (lambda: svc.html_response("<p>caf\u00e9</p>", 201), "text/html; charset=utf-8", "<p>caf\u00e9</p>".encode()),
    ],
    ids=["json", "html"],
)
async def test_response_helpers_encode_once_with_their_type_and_length(
    make_settings: Callable[..., Settings], make: Callable[[], object], content_type: str, body: bytes
) -> None:
    async def endpoint(request: object) -> object:
        return make()

    async with serve(create_app(make_settings(), routes=[svc.Route("/made", endpoint)])) as client:
        response = await client.get("/made")
    assert (response.status_code, response.headers["content-type"], response.content) == (201, content_type, body)
    assert int(response.headers["content-length"]) == len(body)
