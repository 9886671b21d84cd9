"""Per-request context shared by middleware, error rendering and logging."""

from contextvars import ContextVar

#: The current request's id; set by `RequestIdMiddleware`, read by logs and error bodies.
request_id: ContextVar[str | None] = ContextVar("svc.request_id", default=None)
