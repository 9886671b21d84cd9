"""Per-request context shared by the edge, error rendering and logging."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["UNMATCHED", "request_id"]

#: The current request's id; set by the edge, read by logs and problem bodies.
request_id: ContextVar[str | None] = ContextVar("svc.request_id", default=None)

#: The route template of a request that matched no route: unknown paths share it (bounded cardinality).
UNMATCHED = "<unmatched>"
