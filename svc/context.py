"""Per-request context shared by middleware, error rendering and logging."""

from __future__ import annotations

from contextvars import ContextVar

from starlette.routing import Match
from starlette.types import Scope

__all__ = ["UNMATCHED", "request_id", "route_template"]

#: The current request's id; set by `EdgeMiddleware`, read by logs and error bodies.
request_id: ContextVar[str | None] = ContextVar("svc.request_id", default=None)

#: The route template of a request that matched no route: unknown paths share it (bounded cardinality).
UNMATCHED = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The route template (`/items/{id}`) of a request, never its raw path: `UNMATCHED` when no route matches.

    Call it once the request has been handled: the router (or `DirectRoutesMiddleware`) records
    the route it chose in `scope["route"]`. A request answered before routing (a refused body or
    Host, an error in middleware) is matched against the application's routes here.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            if candidate.matches(scope)[0] is not Match.NONE:
                route = candidate
                break
        else:
            return UNMATCHED
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
