"""Per-request context shared by the edge, error rendering, logging and tracing."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from svc.tracing import Spans

__all__ = ["UNMATCHED", "TraceContext", "request_id", "trace"]

#: The current request's id; set by the edge, read by logs and problem bodies.
request_id: ContextVar[str | None] = ContextVar("svc.request_id", default=None)


class TraceContext(NamedTuple):
    """A request's W3C trace context, as its log lines show it.

    `trace_id` and `span_id` are lowercase hex (32 and 16 digits). With tracing off, `span_id` is the
    caller's span (from `traceparent`); with tracing on, the request's own server span. `spans` makes
    child spans of the request's span: None unless that span is recorded (tracing on, and sampled).
    """

    trace_id: str
    span_id: str
    sampled: bool
    state: str | None = None  # `tracestate`, as received
    spans: Spans | None = None


#: The current request's trace context: None without an incoming `traceparent` while tracing is off.
trace: ContextVar[TraceContext | None] = ContextVar("svc.trace", default=None)

#: The route template of a request that matched no route: unknown paths share it (bounded cardinality).
UNMATCHED = "<unmatched>"
