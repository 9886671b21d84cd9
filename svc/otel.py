"""OpenTelemetry export: a server span per request, child spans for SQL and the health probe, OTLP/HTTP out.

Imported by `create_app` only when tracing is configured (`Settings.tracing`: `OTEL_EXPORTER_OTLP_ENDPOINT`
set and `OTEL_SDK_DISABLED` not true); nothing else in svc imports it, so a service without tracing
never loads OpenTelemetry.

Export never holds up a request: ended spans go to a queue of `MAX_QUEUE_SPANS` that the SDK's batch
processor sends from its own thread (`OTEL_EXPORTER_OTLP_TIMEOUT` bounds each send, retries
included). Spans that could not be sent, or found the queue full, are lost: counted
(`svc_trace_spans_lost_total` on `/metrics`) and logged once per process, never retried, never
slowing or failing a request. The SDK's own export warnings are silenced in favour of that line.

Sampling is decided here, before the SDK is asked, with the rule of the SDK sampler `OTEL_TRACES_SAMPLER`
names (`Sampling`): a request that will not be recorded never enters the SDK. It gets cheap random ids
and a `NonRecordingSpan` in the OpenTelemetry context (what the SDK would have made), so that
instrumentation a service adds still sees the request's trace and its not-sampled flag; only recorded
requests pay for the SDK's span.

Only what is safe to show leaves the process: span attributes are the HTTP semantic conventions'
method, path (never the query string), route template, status, scheme, protocol, client address and a
bounded User-Agent; SQL text without its parameters; exception types, never their messages.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Sequence
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from starlette.types import Scope

from svc.context import UNMATCHED, TraceContext
from svc.http.edge import user_agent
from svc.settings import Settings
from svc.tracing import ChildSpan, ServerSpan

__all__ = ["MAX_QUEUE_SPANS", "MAX_STATEMENT_CHARS", "Sampling", "Tracing", "sampler", "traces_endpoint"]

logger = logging.getLogger("svc.tracing")
#: Ended spans waiting for export; when full, the oldest is dropped (and counted).
MAX_QUEUE_SPANS = 2048
#: SQL text on a span is one line of at most this many characters.
MAX_STATEMENT_CHARS = 1000
#: At shutdown, how long the spans still queued may take to leave.
SHUTDOWN_SECONDS = 2.0
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# The SDK logs every failed batch (and every retry); `_Loss` logs the first loss instead.
_CHATTY_LOGGERS = ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.sdk._shared_internal")
# TraceIdRatioBased looks at the low 64 bits of a trace id only (compatibility with 64-bit trace ids).
_LOW_64 = (1 << 64) - 1
_ALL = 1 << 64  # a bound every trace id's low 64 bits are under
_EMPTY = Context()
# The flags the SDK gives an unsampled span: a new trace's ids are random (W3C level 2 `random` flag); a
# continued trace's flags come from the caller's (`_remote_parent` keeps only its sampled flag).
_NEW_TRACE_FLAGS = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_CONTINUED_FLAGS = TraceFlags(TraceFlags.DEFAULT)
_getrandbits = random.getrandbits
# The samplers that ignore the caller's sampled flag; `sampler` makes any other name parent-based.
_ROOT_SAMPLERS = frozenset({"always_on", "always_off", "traceidratio"})


def traces_endpoint(base: str) -> str:
    """The OTLP/HTTP traces URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL: `v1/traces` is appended, per the spec)."""
    return base.rstrip("/") + "/v1/traces"


def sampler(name: str, arg: float | None) -> sampling.Sampler:
    """The sampler `OTEL_TRACES_SAMPLER` names; `arg` is the ratio of the `traceidratio` ones (1.0 when unset)."""
    ratio = 1.0 if arg is None else arg
    match name:
        case "always_on":
            return sampling.ALWAYS_ON
        case "always_off":
            return sampling.ALWAYS_OFF
        case "traceidratio":
            return sampling.TraceIdRatioBased(ratio)
        case "parentbased_always_off":
            return sampling.ParentBased(sampling.ALWAYS_OFF)
        case "parentbased_traceidratio":
            return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
        case _:
            return sampling.ParentBased(sampling.ALWAYS_ON)


class Sampling:
    """Whether a request's server span is recorded: the decision `sampler(name, arg)` makes for it, without the SDK.

    `records(trace_id, parent)` is the SDK sampler's `should_sample(...).decision.is_sampled()` for a
    server span of trace `trace_id` whose parent is the caller's span (`parent`, remote) or none: a
    `parentbased_*` sampler follows the caller's sampled flag when there is a caller, and otherwise (or
    for the other samplers) a trace is recorded iff the low 64 bits of its id are under the bound
    (`always_on`: every id, `always_off`: none, `traceidratio`: `TraceIdRatioBased`'s bound for the ratio).
    """

    __slots__ = ("bound", "follows_parent")

    def __init__(self, name: str, arg: float | None) -> None:
        ratio = 1.0 if arg is None else arg
        self.follows_parent = name.startswith("parentbased_") or name not in _ROOT_SAMPLERS
        match name.removeprefix("parentbased_"):
            case "always_off":
                self.bound = 0
            case "traceidratio":
                self.bound = sampling.TraceIdRatioBased.get_bound_for_rate(ratio)
            case _:
                self.bound = _ALL

    def records(self, trace_id: int, parent: TraceContext | None) -> bool:
        """Whether a server span of trace `trace_id`, a child of `parent` (the caller's span) if any, is recorded."""
        if parent is not None and self.follows_parent:
            return parent.sampled
        return trace_id & _LOW_64 < self.bound


#: The trace id `Tracing.start` chose for a new trace it records, while it has the SDK make its span.
_chosen_trace_id: ContextVar[int | None] = ContextVar("svc.otel.chosen_trace_id", default=None)


class _TraceIds(RandomIdGenerator):
    """The SDK's random ids, except the trace id of a new trace `Tracing.start` decided to record: the one it decided on.

    A ratio sampler's decision depends on the trace id, so the recorded span must have the id the
    decision was made with (the SDK's sampler then makes the same one again).
    """

    def generate_trace_id(self) -> int:
        chosen = _chosen_trace_id.get()
        return super().generate_trace_id() if chosen is None else chosen


class _Loss:
    """Spans lost on the way out, counted; the first loss logged (once per process).

    `dropped` is written on the event loop's thread (a full queue), `failed` on the export thread:
    each counter has one writer.
    """

    def __init__(self) -> None:
        self.ended = 0  # spans given to the queue
        self.handed = 0  # spans taken from it by the exporter
        self.dropped = 0
        self.failed = 0
        self._logged = threading.Event()

    @property
    def lost(self) -> int:
        return self.dropped + self.failed

    def waiting(self) -> int:
        return self.ended - self.handed - self.dropped

    def report(self, why: str) -> None:
        if not self._logged.is_set():
            self._logged.set()
            logger.warning(
                "Trace spans are being lost (%s): they are counted in svc_trace_spans_lost_total, "
                "and this is logged once",
                why,
            )


class _CountingExporter(SpanExporter):
    """The OTLP exporter, with every span it fails to send counted as lost."""

    def __init__(self, exporter: SpanExporter, loss: _Loss) -> None:
        self.exporter = exporter
        self.loss = loss

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.loss.handed += len(spans)
        try:
            result = self.exporter.export(spans)
        except Exception:  # noqa: BLE001 - an exporter fault loses these spans, nothing more
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.loss.failed += len(spans)
            self.loss.report("the OTLP endpoint did not accept them")
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _CountingProcessor(BatchSpanProcessor):
    """The SDK's batch processor, with the spans a full queue drops counted as lost."""

    def __init__(self, exporter: _CountingExporter) -> None:
        super().__init__(exporter, max_queue_size=MAX_QUEUE_SPANS)
        self.loss = exporter.loss

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            loss = self.loss
            if loss.waiting() >= MAX_QUEUE_SPANS:
                loss.dropped += 1  # the queue drops its oldest span for this one
                loss.report("the export queue is full")
            loss.ended += 1
        super().on_end(span)


class _Child:
    """A child span (a SQL statement, a health check)."""

    __slots__ = ("span",)

    def __init__(self, span: otel_trace.Span) -> None:
        self.span = span

    def failed(self, exc: BaseException) -> None:
        _record_error(self.span, _type_name(exc))

    def end(self) -> None:
        self.span.end()


class _RecordedSpan:
    """The server span of a request that is recorded: the SDK's span, attached until `finish` ends it."""

    __slots__ = ("error", "span", "span_id", "spans", "token", "trace_id")

    token: Token[Context]  # set once it is attached

    def __init__(self, span: otel_trace.Span, spans: Tracing) -> None:
        self.span = span
        ids = span.get_span_context()
        self.trace_id = format(ids.trace_id, "032x")
        self.span_id = format(ids.span_id, "016x")
        self.spans = spans
        self.error: str | None = None  # the type of the exception an error response was rendered from

    @property
    def exemplar(self) -> str:
        return self.trace_id

    def failed(self, exc: BaseException) -> None:
        self.error = _type_name(exc)

    def finish(self, method: str, route: str, status: int) -> None:
        span = self.span
        if method not in _METHODS:
            method = "HTTP"
        if route == UNMATCHED:
            span.update_name(method)
        else:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            _record_error(span, self.error or str(status))
        span.end()
        _CURRENT.reset(self.token)


class Tracing:
    """OpenTelemetry for one application: its tracer provider, the server span of each request, child spans.

    Made by `create_app`; `shutdown()` (from the lifespan, in a thread: it blocks) flushes what is
    queued within `SHUTDOWN_SECONDS`. The provider becomes OpenTelemetry's global one when none is
    set yet, so that instrumentation a service adds joins the same traces.
    """

    def __init__(self, settings: Settings) -> None:
        assert settings.otel_exporter_otlp_endpoint is not None
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        resource = Resource.create(
            {
                "service.name": settings.otel_service_name,
                "service.version": settings.app_version,
                "deployment.environment.name": str(settings.app_env),
            }
        )
        name, arg = settings.otel_traces_sampler, settings.otel_traces_sampler_arg
        self.sampling = Sampling(name, arg)
        # The SDK samples with the same sampler: the spans instrumentation a service adds are decided by it.
        self.provider = TracerProvider(sampler=sampler(name, arg), resource=resource, id_generator=_TraceIds())
        exporter = _CountingExporter(
            OTLPSpanExporter(endpoint=traces_endpoint(settings.otel_exporter_otlp_endpoint)), _Loss()
        )
        self.loss = exporter.loss
        self.processor = _CountingProcessor(exporter)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("svc", settings.app_version)
        if isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider):
            otel_trace.set_tracer_provider(self.provider)

    @property
    def lost(self) -> int:
        """Spans lost so far: not accepted by the endpoint, or dropped from a full queue."""
        return self.loss.lost

    def start(self, scope: Scope, incoming: TraceContext | None) -> ServerSpan:
        """Open the server span of the request `scope` (a child of the caller's span when `incoming`), and attach it.

        A request `sampling` does not record gets no SDK span: a `NonRecordingSpan` with new random ids
        (the caller's trace id when `incoming`) is attached instead, as the SDK would have made it.
        """
        if incoming is None:
            trace_id = _getrandbits(128) or 1  # never the invalid all-zero id
            base = _CURRENT.get()
        else:
            trace_id = int(incoming.trace_id, 16)
            base = _EMPTY
        server: _RecordedSpan | _UnrecordedSpan
        if self.sampling.records(trace_id, incoming):
            span = self._recorded(scope, trace_id, incoming)
            server = _RecordedSpan(span, self)
        else:
            span = server = _UnrecordedSpan(trace_id, incoming)
        # OpenTelemetry's current span from now on: in the current context for a new trace, alone for a continued
        # one (as the SDK's `start_as_current_span` under the caller's context would).
        server.token = _CURRENT.set(Context({**base, _SPAN_KEY: span}) if base else Context({_SPAN_KEY: span}))
        return server

    def _recorded(self, scope: Scope, trace_id: int, incoming: TraceContext | None) -> otel_trace.Span:
        """The SDK's server span for the request `scope`, with the HTTP attributes (trace `trace_id`, parent `incoming`)."""
        method = scope["method"]
        known = method in _METHODS
        client = scope.get("client")
        attributes: dict[str, Any] = {
            "http.request.method": method if known else "_OTHER",
            "url.path": scope["path"],
            "url.scheme": scope["scheme"],
            "network.protocol.version": scope["http_version"],
        }
        if not known:
            attributes["http.request.method_original"] = method[:32]
        if client:
            attributes["client.address"] = client[0]
        if (agent := user_agent(scope["headers"])) is not None:
            attributes["user_agent.original"] = agent
        # Given at the start, as the semantic conventions ask: a sampler may read them.
        name = method if known else "HTTP"
        if incoming is not None:
            parent = _remote_parent(incoming, trace_id)
            return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        chosen = _chosen_trace_id.set(trace_id)
        try:
            return self.tracer.start_span(name, kind=SpanKind.SERVER, attributes=attributes)
        finally:
            _chosen_trace_id.reset(chosen)

    def statement(self, statement: str) -> _Child:
        text = " ".join(statement.split())
        if len(text) > MAX_STATEMENT_CHARS:
            text = text[: MAX_STATEMENT_CHARS - 1] + "…"
        operation = text.split(" ", 1)[0].upper()
        attributes = {"db.system.name": "postgresql", "db.query.text": text}
        if operation.isalpha():
            attributes["db.operation.name"] = operation
        name = operation if operation.isalpha() else "postgresql"
        return _Child(self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes))

    def probe(self) -> _Child:
        attributes = {"db.system.name": "postgresql", "db.query.text": "SELECT 1"}
        return _Child(self.tracer.start_span("health postgresql", kind=SpanKind.CLIENT, attributes=attributes))

    def probed(self, span: ChildSpan, status: str) -> None:
        assert isinstance(span, _Child)
        span.span.set_attribute("svc.health.status", status)
        if status == "fail":
            _record_error(span.span, "health_check_failed")

    def shutdown(self) -> None:
        """Send what is queued and stop exporting, waiting at most `SHUTDOWN_SECONDS` (an endpoint that is down
        is retried by the SDK for longer: the process does not wait for it); say how many spans were lost."""
        stopping = threading.Thread(target=self.provider.shutdown, name="svc-tracing-shutdown", daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_SECONDS)
        if self.lost:
            logger.warning("%d trace spans were lost in this process", self.lost)


def _current_context() -> tuple[ContextVar[Context], str]:
    """The context variable that holds OpenTelemetry's current context, and the key of the current span in it.

    Each request sets them directly, where the API (`set_span_in_context`, `attach`, `detach`) takes
    eight Python calls (bench/README.md has what that costs). Both are found through the API: the key
    is the one key of a context `set_span_in_context` makes, the variable the one whose token `attach`
    returns (the contextvars runtime context's: svc allows no other, see `OTEL_PYTHON_CONTEXT`).
    """
    [key] = otel_trace.set_span_in_context(otel_trace.INVALID_SPAN, _EMPTY)
    token = otel_context.attach(_EMPTY)
    otel_context.detach(token)
    return token.var, key


_CURRENT, _SPAN_KEY = _current_context()


def _remote_parent(incoming: TraceContext, trace_id: int) -> Context:
    state = TraceState.from_header([incoming.state]) if incoming.state else None
    flags = TraceFlags(TraceFlags.SAMPLED if incoming.sampled else TraceFlags.DEFAULT)
    ids = SpanContext(trace_id, int(incoming.span_id, 16), True, flags, state)
    return otel_trace.set_span_in_context(NonRecordingSpan(ids), _EMPTY)


class _UnrecordedSpan(NonRecordingSpan):
    """The server span of a request that is not recorded: the local, unsampled `NonRecordingSpan` the SDK would make.

    It is also what the edge and log lines ask of a request's span (`svc.tracing.ServerSpan`), so an
    unrecorded request makes this one object. What few requests ask for is made when first asked: its
    `SpanContext` (by instrumentation a service adds; with the caller's `tracestate` parsed, it is
    most of what such a span would cost), its ids in hex (by log lines).
    """

    spans = None
    exemplar = None
    token: Token[Context]  # set once it is attached

    def __init__(self, trace_id: int, incoming: TraceContext | None) -> None:
        # Not NonRecordingSpan.__init__: it takes the SpanContext this span builds when asked.
        self._trace_id = trace_id
        self._span_id = _getrandbits(64) or 1  # never the invalid all-zero id
        self._incoming = incoming

    @functools.cached_property
    def trace_id(self) -> str:
        # Lowercase hex through bytes: half the cost of format(id, "032x").
        incoming = self._incoming
        return self._trace_id.to_bytes(16, "big").hex() if incoming is None else incoming.trace_id

    @functools.cached_property
    def span_id(self) -> str:
        return self._span_id.to_bytes(8, "big").hex()

    @functools.cached_property
    def _span_context(self) -> SpanContext:
        incoming = self._incoming
        if incoming is None:
            return SpanContext(self._trace_id, self._span_id, False, _NEW_TRACE_FLAGS)
        state = TraceState.from_header([incoming.state]) if incoming.state else None
        return SpanContext(self._trace_id, self._span_id, False, _CONTINUED_FLAGS, state)

    def get_span_context(self) -> SpanContext:
        return self._span_context

    def failed(self, exc: BaseException) -> None:
        pass  # nothing is recorded

    def finish(self, method: str, route: str, status: int) -> None:
        _CURRENT.reset(self.token)

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self._span_context!r})"


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _record_error(span: otel_trace.Span | Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))
