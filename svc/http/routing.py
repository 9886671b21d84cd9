"""Routes and the router: which endpoint answers a request.

`Route` is svc's route: its endpoint is `async def endpoint(request) -> Response`, called by the
edge, which sends the response itself. Any other Starlette route (a `Route` to a plain ASGI app,
a `Mount`, a `WebSocketRoute`) is served as Starlette serves it, through its `handle`.

The `Router` keeps Starlette's semantics (first full match in declaration order; a path that
matches with another method is a 405 with `Allow`; HEAD wherever GET is allowed) and finds a route
on a path without parameters with one dictionary lookup, whoever declared it: the health endpoints
and a service's own routes take the same path.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Scope

from svc.errors import MethodNotAllowed, NotFound, ServiceError, ServiceUnavailable

__all__ = ["Endpoint", "Route", "Router", "Target"]

Endpoint = Callable[[Request], Awaitable[Response]]


def _is_async(endpoint: object) -> bool:
    while isinstance(endpoint, functools.partial):
        endpoint = endpoint.func
    if inspect.isroutine(endpoint):
        return inspect.iscoroutinefunction(endpoint)
    return callable(endpoint) and inspect.iscoroutinefunction(type(endpoint).__call__)


class Route(StarletteRoute):
    """A route to `endpoint(request) -> Response` (a coroutine function or any async callable; a plain
    function runs in the thread pool). `methods` default to GET (and so HEAD).

    Errors are raised, not answered: a `svc.errors.ServiceError` (or Starlette's `HTTPException`)
    becomes its problem+json response, anything else a 500.

    What the route takes and answers is declared once, as types, for the OpenAPI document:
    `body` (the JSON body's msgspec Struct), `query` (a Struct of the query parameters),
    `responses` (status → the body's type, or None: no body for a success, a problem for an
    error), and `summary`, `description`, `tags`. The endpoint still decodes explicitly
    (`svc.decode_body(request, NoteIn)`): nothing is injected.
    """

    def __init__(
        self,
        path: str,
        endpoint: Callable[[Request], Awaitable[Response] | Response],
        *,
        methods: Collection[str] = ("GET",),
        name: str | None = None,
        include_in_schema: bool = True,
        body: type | None = None,
        query: type | None = None,
        responses: Mapping[int, type | None] | None = None,
        summary: str | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        super().__init__(path, endpoint, methods=methods, name=name, include_in_schema=include_in_schema)
        self.handler: Endpoint = (
            endpoint  # type: ignore[assignment]
            if _is_async(endpoint)
            else functools.partial(run_in_threadpool, endpoint)  # type: ignore[call-arg]
        )
        # Starlette's own way to serve it, for a Starlette router or `Route.handle`.
        self.app = request_response(endpoint)
        self.body = body
        self.query = query
        self.responses = dict(responses or {})
        self.summary = summary
        self.description = description
        self.tags = tuple(tags)


@dataclass(frozen=True, slots=True)
class Target:
    """What answers a request: an svc `Route`'s `handler`, or (`handler` None) another route's ASGI `handle`."""

    route: BaseRoute
    handler: Endpoint | None
    app: ASGIApp


def _target(route: BaseRoute) -> Target:
    if isinstance(route, Route):
        return Target(route, route.handler, route.handle)
    return Target(route, None, route.handle)


def _probe_scope(path: str) -> Scope:
    return {"type": "http", "path": path, "root_path": "", "method": "GET", "path_params": {}}


class Router:
    """Routes in declaration order, the ones without path parameters also by exact path.

    While `pending` says why routes are still to come (a service being imported at start-up), a
    request that no route takes is a 503 with that reason instead of a 404.
    """

    def __init__(self, routes: Sequence[BaseRoute], *, pending: str | None = None) -> None:
        self.pending = pending
        self.routes: list[BaseRoute] = []
        self.exact: dict[str, dict[str, Target]] = {}
        self.set_routes(routes)

    def set_routes(self, routes: Sequence[BaseRoute]) -> None:
        """Serve `routes` from now on (made whole before they replace the current ones)."""
        routes = list(routes)
        exact: dict[str, dict[str, Target]] = {}
        for index, route in enumerate(routes):
            if not isinstance(route, StarletteRoute) or route.param_convertors or route.methods is None:
                continue
            # A route with parameters declared earlier that takes this path too wins, as in Starlette:
            # then the path is left to the ordered scan.
            probe = _probe_scope(route.path)
            if any(
                not isinstance(earlier, StarletteRoute) or earlier.param_convertors
                for earlier in routes[:index]
                if earlier.matches(probe)[0] is not Match.NONE
            ):
                continue
            by_method = exact.setdefault(route.path, {})
            for method in route.methods:
                by_method.setdefault(method, _target(route))
        self.routes, self.exact = routes, exact

    def match(self, scope: Scope) -> Target | ServiceError:
        """The target for an HTTP request, recorded in `scope` as Starlette's router records it; else its error."""
        scope["router"] = self
        root_path = scope.get("root_path")
        if not root_path:
            by_method = self.exact.get(scope["path"])
            if by_method is not None and (target := by_method.get(scope["method"])) is not None:
                scope["route"], scope["endpoint"], scope["path_params"] = target.route, target.route.endpoint, {}  # type: ignore[attr-defined]
                return target
        return self._scan(scope)

    def _scan(self, scope: Scope) -> Target | ServiceError:
        allowed: set[str] = set()
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                return _target(route)
            if match is Match.PARTIAL:
                partial = partial or (route, child_scope)
                allowed.update(getattr(route, "methods", None) or ())
        if partial is None:
            if self.pending is not None:
                return ServiceUnavailable(f"The service is not ready: {self.pending}", headers={"Retry-After": "1"})
            return NotFound()
        scope["route"] = partial[0]
        scope.update(partial[1])
        return MethodNotAllowed(headers={"Allow": ", ".join(sorted(allowed))})

    def websocket(self, scope: Scope) -> ASGIApp | None:
        """The ASGI app of the route that takes a WebSocket connection, or None."""
        scope["router"] = self
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                return route.handle
        return None

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        """The path of the route named `name` (Starlette's `request.url_for` calls this)."""
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)
