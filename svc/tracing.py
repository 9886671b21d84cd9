"""Trace context on every request (W3C Trace Context), and the hooks that make child spans when tracing is on.

This module imports no OpenTelemetry package: `svc.otel` does, and only `create_app` imports it, when
tracing is configured (`Settings.tracing`). Without it the edge still reads a valid `traceparent` (in
the header loop it runs anyway) so that log lines carry the caller's trace id; with it every request
gets a server span (`svc.otel.Tracing`), and the hooks below give database statements and the health
probe child spans of it. Each hook costs a context-variable read when there is no recorded span.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import ParamSpec, Protocol, TypeVar

from svc.context import Trace, TraceContext, current

__all__ = ["MAX_TRACESTATE_BYTES", "ChildSpan", "ServerSpan", "Spans", "incoming", "statement_span", "traced_probe"]


class _Outcome(Protocol):
    @property
    def status(self) -> str: ...


P = ParamSpec("P")
R = TypeVar("R", bound=_Outcome)

# version-trace_id-parent_id-flags, lowercase hex; a later version may append fields after another "-".
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x20-\x7e]*)?")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
#: A longer `tracestate` is dropped (W3C: at most 32 members; 512 characters is what must be propagated).
MAX_TRACESTATE_BYTES = 512


def incoming(traceparent: bytes, tracestate: bytes | None) -> TraceContext | None:
    """The caller's trace context from its `traceparent` and `tracestate` values; None when `traceparent` is invalid.

    Invalid means not W3C Trace Context level 1: version `ff`, extra fields on version `00`, upper-case
    hex, an all-zero trace or parent id. `tracestate` is kept when it is printable ASCII of at most
    `MAX_TRACESTATE_BYTES` (several headers arrive joined by commas), and ignored otherwise.
    """
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    state = None
    if tracestate is not None and len(tracestate) <= MAX_TRACESTATE_BYTES and _PRINTABLE.fullmatch(tracestate):
        state = tracestate.decode()
    return TraceContext(trace_id.decode(), span_id.decode(), int(flags, 16) & 1 == 1, state)


class ChildSpan(Protocol):
    """A span under the request's span, open until `end()`."""

    def failed(self, exc: BaseException) -> None:
        """Mark the span failed by `exc` (its type only: an exception's text may hold data)."""

    def end(self) -> None: ...


class ServerSpan(Trace, Protocol):
    """A request's server span (`svc.otel.Tracing.start`), attached as the current span until `finish`."""

    @property
    def exemplar(self) -> str | None:
        """The trace id for a metrics exemplar: only a recorded (sampled and exported) span has one."""

    def failed(self, exc: BaseException) -> None:
        """Note that the response is rendered from `exc` (recorded as `error.type` if the status is 5xx)."""

    def finish(self, method: str, route: str, status: int) -> None:
        """End the span, named by `method` and `route` (the route template), with the response's `status`; detach it."""


class Spans(Protocol):
    """What makes child spans of a recorded request span (`svc.otel.Tracing` when tracing is on)."""

    def statement(self, statement: str) -> ChildSpan:
        """A span for one SQL statement: its text (never its parameters), bounded."""

    def probe(self) -> ChildSpan:
        """A span for one database health check."""

    def probed(self, span: ChildSpan, status: str) -> None:
        """Note a health check's outcome (`pass`, `warn`, `fail`) on its span (made by `probe()`)."""


def _recorded_spans() -> Spans | None:
    """What makes child spans of the current request's span: None unless there is one and it is recorded."""
    _, context = current.get() or (None, None)
    return None if context is None else context.spans


def statement_span(statement: str) -> ChildSpan | None:
    """A child span for `statement` when the current request's span is recorded, else None (end it when done)."""
    spans = _recorded_spans()
    return None if spans is None else spans.statement(statement)


def traced_probe(measure: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """`measure` (a probe's check, whose result has a `status`) in a child span of the request that started it."""

    @functools.wraps(measure)
    async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
        spans = _recorded_spans()
        if spans is None:
            return await measure(*args, **kwargs)
        span = spans.probe()
        try:
            result = await measure(*args, **kwargs)
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
        spans.probed(span, result.status)
        span.end()
        return result

    return traced
