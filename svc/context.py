"""Per-request context shared by the edge, error rendering, logging and tracing."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from svc.tracing import Spans

__all__ = ["UNMATCHED", "Trace", "TraceContext", "current"]


class TraceContext(NamedTuple):
    """A caller's W3C trace context (`traceparent`, `tracestate`): with tracing off, the request's trace as its log
    lines show it; with tracing on, the parent of its server span.

    `trace_id` and `span_id` (the caller's span) are lowercase hex, 32 and 16 digits. `spans` is None:
    child spans are made under a recorded server span only.
    """

    trace_id: str
    span_id: str
    sampled: bool
    state: str | None = None  # `tracestate`, as received
    spans: Spans | None = None


class Trace(Protocol):
    """A request's trace as its log lines and child spans see it: a `TraceContext` (tracing off), else its server span."""

    @property
    def trace_id(self) -> str:
        """Lowercase hex, 32 digits."""

    @property
    def span_id(self) -> str:
        """Lowercase hex, 16 digits: the request's server span (tracing on), else the caller's span."""

    @property
    def spans(self) -> Spans | None:
        """What makes child spans of the request's span: None unless that span is recorded."""


#: The request being answered, as its log lines, problem bodies and child spans see it: its id and its trace (None
#: without an incoming `traceparent` while tracing is off). Set by the edge for as long as the request is answered;
#: one variable, and a plain tuple, because both are made for every request (a named tuple costs a Python call).
current: ContextVar[tuple[str, Trace | None] | None] = ContextVar("svc.current", default=None)

#: The route template of a request that matched no route: unknown paths share it (bounded cardinality).
UNMATCHED = "<unmatched>"
