"""Tracing: W3C trace context in every log line, and spans exported over OTLP/HTTP to a real receiver.

The export tests run a real uvicorn (the test app: `/hold` queries through SQLAlchemy, `/fast` on the
fast path) against `tests.otlp.Receiver`, which decodes the real protobuf payloads. Each stops its
server before looking: shutdown flushes what is queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from svc.app import App, create_app
from svc.settings import Settings
from svc.tracing import incoming
from tests.conftest import serve
from tests.otlp import Receiver, Span
from tests.support import UvicornProcess

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
TOKEN = "health-token-0123456789-abcdef"  # a secret that must never reach a span
APP = "tests.apps:create_test_app"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def traced(uvicorn: Callable[..., UvicornProcess], receiver: Receiver) -> Callable[..., UvicornProcess]:
    """Start the test app exporting to `receiver` (batches sent every 50 ms)."""

    def start(**variables: str) -> UvicornProcess:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "svc-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            **variables,
        }
        server = uvicorn("--factory", app=APP, wait=False, **env)
        server.wait_ready("/health/ready")  # polled: only the paths the tests ask for are theirs
        return server

    return start


def get(server: UvicornProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(server.base_url + path, headers=headers, timeout=10)


def server_span(spans: Sequence[Span], path: str) -> Span:
    [span] = [s for s in spans if s.kind == "SPAN_KIND_SERVER" and s.attributes.get("url.path") == path]
    return span


def children(spans: Sequence[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]


def access_line(server: UvicornProcess, path: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    [line] = [e for e in lines if e["logger"] == "svc.access" and e["path"] == path]
    return line


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("path", "statement"),
    [("/hold", "SELECT pg_backend_pid()"), ("/fast", "SELECT $1::int + 1")],
    ids=["sqlalchemy", "fast path"],
)
def test_an_incoming_trace_is_continued_down_to_the_database_statements_and_the_log_line(
    traced: Callable[..., UvicornProcess], receiver: Receiver, path: str, statement: str
) -> None:
    server = traced()
    assert get(server, path, traceparent=SAMPLED).status_code == 200
    server.stop()

    span = server_span(receiver.spans, path)
    assert (span.trace_id, span.parent_id, span.name) == (TRACE_ID, PARENT_ID, f"GET {path}")
    assert span.attributes["http.route"] == path
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.scheme"] == "http"
    assert not span.error
    assert span.resource["service.name"] == "svc-test"
    queries = [s for s in children(receiver.spans, span) if s.attributes.get("db.query.text") == statement]
    assert [(q.name, q.kind, q.attributes["db.system.name"]) for q in queries] == [
        ("SELECT", "SPAN_KIND_CLIENT", "postgresql")
    ]
    line = access_line(server, path)
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, span.span_id)


@pytest.mark.e2e
def test_without_an_incoming_trace_each_request_starts_one(
    traced: Callable[..., UvicornProcess], receiver: Receiver
) -> None:
    server = traced()
    get(server, "/health/live")
    server.stop()
    span = server_span(receiver.spans, "/health/live")
    assert span.parent_id == ""
    assert span.name == "GET /health/live"
    assert access_line(server, "/health/live")["trace_id"] == span.trace_id


@pytest.mark.e2e
def test_the_health_probe_is_a_child_span_of_the_request_that_ran_it(
    traced: Callable[..., UvicornProcess], receiver: Receiver
) -> None:
    server = traced(HEALTH_DB_CACHE_TTL="0")
    assert get(server, "/health/db", traceparent=SAMPLED).status_code == 200
    server.stop()
    [probe] = children(receiver.spans, server_span(receiver.spans, "/health/db"))
    assert probe.name == "health postgresql"
    assert probe.attributes["svc.health.status"] == "pass"
    assert probe.attributes["db.query.text"] == "SELECT 1"


@pytest.mark.e2e
def test_an_error_is_recorded_with_its_status_and_type(
    traced: Callable[..., UvicornProcess], receiver: Receiver
) -> None:
    server = traced()
    assert get(server, "/hold?seconds=soon").status_code == 500
    server.stop()
    span = server_span(receiver.spans, "/hold")
    assert span.error
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["error.type"] == "ValueError"


@pytest.mark.e2e
def test_an_unmatched_path_is_named_by_its_method_alone(
    traced: Callable[..., UvicornProcess], receiver: Receiver
) -> None:
    server = traced()
    assert get(server, "/no/such/path").status_code == 404
    server.stop()
    span = server_span(receiver.spans, "/no/such/path")
    assert span.name == "GET"
    assert "http.route" not in span.attributes
    assert not span.error  # a 4xx is the client's error, not the server's


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("variables", "headers", "exported"),
    [
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}, {}, False),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}, {}, True),
        ({}, {"traceparent": NOT_SAMPLED}, False),
        ({}, {"traceparent": SAMPLED}, True),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, {}, False),
        ({"OTEL_SDK_DISABLED": "true"}, {"traceparent": SAMPLED}, False),
    ],
    ids=["ratio 0", "ratio 1", "parent not sampled", "parent sampled", "parent-based off", "sdk disabled"],
)
def test_sampling_decides_what_is_exported(
    traced: Callable[..., UvicornProcess],
    receiver: Receiver,
    variables: dict[str, str],
    headers: dict[str, str],
    exported: bool,
) -> None:
    server = traced(**variables)
    for _ in range(20):
        assert get(server, "/health/live", **headers).status_code == 200
    server.stop()
    live = [s for s in receiver.spans if s.attributes.get("url.path") == "/health/live"]
    assert len(live) == (20 if exported else 0)
    if headers:  # exported or not, the log line joins the caller's trace
        assert access_line_trace_ids(server) == {TRACE_ID}


def access_line_trace_ids(server: UvicornProcess) -> set[str]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return {e.get("trace_id") for e in lines if e["logger"] == "svc.access" and e["path"] == "/health/live"}


@pytest.mark.e2e
def test_an_exporter_that_is_down_loses_spans_counts_them_and_says_so_once(
    uvicorn: Callable[..., UvicornProcess], refused_port: int
) -> None:
    server = uvicorn(
        "--factory",
        app=APP,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{refused_port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_SCHEDULE_DELAY="50",
        wait=False,
    )
    server.wait_ready("/health/ready")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        slowest = 0.0
        for _ in range(300):
            start = time.perf_counter()
            assert client.get("/fast", headers={"traceparent": SAMPLED}).status_code == 200
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 0.5
        deadline = time.monotonic() + 10
        while (lost := spans_lost(client.get("/metrics").text)) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert lost > 0
    server.stop()
    output = server.output()
    assert output.count("Trace spans are being lost") == 1
    assert "Failed to export" not in output  # the SDK's own line for every batch is silenced


def spans_lost(exposition: str) -> float:
    match = re.search(r"^svc_trace_spans_lost_total (\S+)$", exposition, re.M)
    assert match is not None, exposition
    return float(match[1])


@pytest.mark.e2e
def test_no_secret_reaches_a_span(traced: Callable[..., UvicornProcess], receiver: Receiver, database_url: str) -> None:
    server = traced(HEALTH_TOKEN=TOKEN, HEALTH_SHOW_DETAILS="when_authorized", HEALTH_DB_CACHE_TTL="0")
    bearer = {"Authorization": f"Bearer {TOKEN}", "traceparent": SAMPLED}
    for path in ("/health/db", "/metrics", f"/hold?token={TOKEN}", f"/fast?password={TOKEN}"):
        assert get(server, path, **bearer).status_code == 200
    server.stop()
    secrets = [TOKEN, "Bearer"]
    if password := urlsplit(database_url).password:
        secrets.append(password)
    spans = receiver.spans
    assert len(spans) >= 8
    shown = [str(v) for s in spans for v in (*s.attributes.values(), *s.resource.values(), s.name)]
    assert [v for v in shown if any(secret in v for secret in secrets)] == []


@pytest.mark.e2e
def test_openmetrics_latency_buckets_carry_the_trace_ids_of_sampled_requests(
    traced: Callable[..., UvicornProcess], receiver: Receiver
) -> None:
    server = traced()
    get(server, "/health/live", traceparent=SAMPLED)
    get(server, "/health/live", traceparent=NOT_SAMPLED.replace(TRACE_ID, "1" * 32))
    openmetrics = get(server, "/metrics", Accept="application/openmetrics-text; version=1.0.0").text
    text = get(server, "/metrics").text
    server.stop()
    buckets = [line for line in openmetrics.splitlines() if 'route="/health/live"' in line and "_bucket" in line]
    assert [line for line in buckets if f'# {{trace_id="{TRACE_ID}"}}' in line] != []
    assert "1" * 32 not in openmetrics  # not sampled: no exemplar
    assert "trace_id" not in text  # the text format has none


# --- in process: the trace context alone, tracing off ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (SAMPLED, (TRACE_ID, PARENT_ID, True)),
        (NOT_SAMPLED, (TRACE_ID, PARENT_ID, False)),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-future-field", (TRACE_ID, PARENT_ID, True)),
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", None),
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID}-{PARENT_ID}", None),
        ("", None),
    ],
)
def test_only_a_valid_traceparent_is_read(traceparent: str, expected: tuple[str, str, bool] | None) -> None:
    context = incoming(traceparent.encode(), None)
    assert (None if context is None else context[:3]) == expected


@pytest.mark.parametrize(
    ("tracestate", "kept"),
    [(b"vendor=abc,other=1", "vendor=abc,other=1"), (b"x=" + b"a" * 600, None), (b"bad=\x01", None)],
)
def test_tracestate_is_kept_when_printable_and_bounded(tracestate: bytes, kept: str | None) -> None:
    context = incoming(SAMPLED.encode(), tracestate)
    assert context is not None
    assert context.state == kept


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_every_log_line_of_a_request_carries_the_callers_trace(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    async with serve(create_app(make_settings(log_format=log_format))) as client:
        capsys.readouterr()
        response = await client.get("/nope", headers={"traceparent": SAMPLED, "X-Request-ID": "req-t"})
        err = capsys.readouterr().err
    assert response.status_code == 404
    server_side = [line for line in err.splitlines() if "HTTP Request:" not in line]  # httpx's own, client side
    assert len(server_side) == 1  # the access line
    for line in server_side:
        if log_format == "json":
            entry = json.loads(line)
            assert (entry["request_id"], entry["trace_id"], entry["span_id"]) == ("req-t", TRACE_ID, PARENT_ID)
        else:
            assert f"[request_id=req-t trace_id={TRACE_ID} span_id={PARENT_ID}]" in line


@pytest.mark.parametrize("traceparent", [None, f"00-{TRACE_ID}-{PARENT_ID}-0x"])
async def test_without_a_valid_traceparent_log_lines_have_no_trace_and_nothing_is_echoed(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str], traceparent: str | None
) -> None:
    headers = {"X-Request-ID": "req-u"} | ({"traceparent": traceparent} if traceparent else {})
    async with serve(create_app(make_settings())) as client:
        capsys.readouterr()
        response = await client.get("/health/live", headers=headers)
        err = capsys.readouterr().err
    assert "traceparent" not in response.headers
    entries = [json.loads(line) for line in err.splitlines() if "HTTP Request:" not in line]
    assert [e["request_id"] for e in entries] == ["req-u"]
    assert ["trace_id" in e or "span_id" in e for e in entries] == [False]


# --- in process: tracing on, sampling decided before the SDK ---------------------------------------------------------

SAMPLERS = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("arg", [None, 0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("parent", [None, SAMPLED, NOT_SAMPLED], ids=["new trace", "parent sampled", "parent not"])
def test_the_sampling_decision_is_the_sdk_samplers(name: str, arg: float | None, parent: str | None) -> None:
    from opentelemetry import trace as otel_trace
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from svc.otel import Sampling, sampler

    caller = None if parent is None else incoming(parent.encode(), None)
    parent_context = None
    if caller is not None:
        flags = TraceFlags(TraceFlags.SAMPLED if caller.sampled else TraceFlags.DEFAULT)
        ids = SpanContext(int(caller.trace_id, 16), int(caller.span_id, 16), True, flags)
        parent_context = otel_trace.set_span_in_context(NonRecordingSpan(ids), Context())
    ours, sdk = Sampling(name, arg), sampler(name, arg)
    bound = TraceIdRatioBased.get_bound_for_rate(1.0 if arg is None else arg)
    high = random.Random(17).getrandbits(64) << 64  # the high bits play no part: any will do
    edges = [1, bound - 1, bound, bound + 1, (1 << 64) - 1, high | (bound - 1), high | bound, (1 << 128) - 1]
    trace_ids = [i for i in edges if i > 0] + [random.Random(i).getrandbits(128) or 1 for i in range(2000)]
    if caller is not None:  # a child span keeps its parent's trace id
        trace_ids = [int(caller.trace_id, 16)]
    decisions = [
        (ours.records(i, caller), sdk.should_sample(parent_context, i, "GET").decision.is_sampled()) for i in trace_ids
    ]
    assert [i for i, (a, b) in zip(trace_ids, decisions, strict=True) if a != b] == []
    if name.endswith("traceidratio") and arg == 0.5 and caller is None:
        assert 0.4 < sum(a for a, _ in decisions) / len(decisions) < 0.6  # both sides of the bound were seen


async def whose_span(request: Request) -> JSONResponse:
    """The OpenTelemetry span that instrumentation added to a route would see as its parent."""
    from opentelemetry import trace as otel_trace

    span = otel_trace.get_current_span()
    ids = span.get_span_context()
    return JSONResponse(
        {
            "trace_id": f"{ids.trace_id:032x}",
            "span_id": f"{ids.span_id:016x}",
            "sampled": ids.trace_flags.sampled,
            "remote": ids.is_remote,
            "recording": span.is_recording(),
            "tracestate": ids.trace_state.to_header(),
        }
    )


@pytest.fixture
def traced_app(make_settings: Callable[..., Settings], receiver: Receiver) -> Callable[..., App]:
    """An in-process app exporting to `receiver`, with `/whose` (what instrumentation sees) among its routes."""

    def make(sampler: str, arg: float | None = None) -> App:
        settings = make_settings(
            otel_exporter_otlp_endpoint=receiver.endpoint, otel_traces_sampler=sampler, otel_traces_sampler_arg=arg
        )
        return create_app(settings, routes=[Route("/whose", whose_span)])

    return make


def access_lines(err: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in entries if e["logger"] == "svc.access"]


@contextlib.contextmanager
def sdk_calls() -> Iterator[list[str]]:
    """The OpenTelemetry SDK's functions called on this thread inside the block."""
    called: list[str] = []
    sdk = f"{os.sep}opentelemetry{os.sep}sdk{os.sep}"

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and sdk in frame.f_code.co_filename:
            called.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(None)


async def test_a_request_that_is_not_recorded_continues_its_callers_trace_without_the_sdk(
    traced_app: Callable[..., App], receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(traced_app("parentbased_always_on")) as client:
        capsys.readouterr()
        with sdk_calls() as called:
            response = await client.get("/whose", headers={"traceparent": NOT_SAMPLED, "tracestate": "vendor=abc"})
        err = capsys.readouterr().err
    assert called == []
    [line] = access_lines(err)
    seen = response.json()
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, seen["span_id"])  # the request's own span id
    assert seen == {
        "trace_id": TRACE_ID,
        "span_id": seen["span_id"],
        "sampled": False,
        "remote": False,
        "recording": False,
        "tracestate": "vendor=abc",
    }
    assert re.fullmatch("[0-9a-f]{16}", seen["span_id"])
    assert seen["span_id"] not in {PARENT_ID, "0" * 16}
    assert receiver.spans == []  # shut down: whatever was queued has been sent


async def test_a_new_trace_that_is_not_recorded_gets_its_ids_without_the_sdk(
    traced_app: Callable[..., App], receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(traced_app("parentbased_traceidratio", 0.0)) as client:
        capsys.readouterr()
        with sdk_calls() as called:
            responses = [await client.get("/whose") for _ in range(3)]
        err = capsys.readouterr().err
    assert called == []
    seen = [r.json() for r in responses]
    assert [(e["trace_id"], e["span_id"]) for e in access_lines(err)] == [(s["trace_id"], s["span_id"]) for s in seen]
    assert len({s["trace_id"] for s in seen}) == 3
    assert all(re.fullmatch("[0-9a-f]{32}", s["trace_id"]) and s["trace_id"] != "0" * 32 for s in seen)
    assert {(s["sampled"], s["remote"], s["recording"]) for s in seen} == {(False, False, False)}
    assert receiver.spans == []


async def test_a_callers_sampled_flag_is_followed_whatever_the_ratio(
    traced_app: Callable[..., App], receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(traced_app("parentbased_traceidratio", 0.0)) as client:
        capsys.readouterr()
        response = await client.get("/whose", headers={"traceparent": SAMPLED})
        err = capsys.readouterr().err
    [line] = access_lines(err)
    span = server_span(receiver.spans, "/whose")
    assert (span.trace_id, span.parent_id, span.span_id) == (TRACE_ID, PARENT_ID, line["span_id"])
    assert line["trace_id"] == TRACE_ID
    assert response.json()["recording"] is True


async def test_new_traces_are_recorded_by_their_trace_id_as_the_ratio_sampler_says(
    traced_app: Callable[..., App], receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    async with serve(traced_app("traceidratio", 0.5)) as client:
        capsys.readouterr()
        for _ in range(60):
            assert (await client.get("/health/live")).status_code == 200
        err = capsys.readouterr().err
    bound = TraceIdRatioBased.get_bound_for_rate(0.5)
    logged = [e["trace_id"] for e in access_lines(err)]
    chosen = {t for t in logged if int(t, 16) & ((1 << 64) - 1) < bound}
    exported = [s for s in receiver.spans if s.attributes.get("url.path") == "/health/live"]
    assert len(logged) == 60
    assert 0 < len(chosen) < 60
    # Each recorded span has the trace id its request's log line shows, and only those the rule picks are recorded.
    assert sorted(s.trace_id for s in exported) == sorted(chosen)


@pytest.mark.parametrize(
    ("sampler", "traceparent"),
    [("parentbased_always_on", None), ("parentbased_always_off", None), ("parentbased_always_on", NOT_SAMPLED)],
)
async def test_a_requests_span_is_current_only_while_it_is_answered(
    traced_app: Callable[..., App], sampler: str, traceparent: str | None
) -> None:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace

    from svc.context import current

    outer = otel_trace.NonRecordingSpan(otel_trace.SpanContext(1, 2, False))
    token = otel_context.attach(otel_trace.set_span_in_context(outer))
    try:
        async with serve(traced_app(sampler)) as client:
            headers = {} if traceparent is None else {"traceparent": traceparent}
            seen = (await client.get("/whose", headers=headers)).json()
            assert otel_trace.get_current_span() is outer
            assert current.get() is None
    finally:
        otel_context.detach(token)
    assert seen["span_id"] != f"{2:016x}"
