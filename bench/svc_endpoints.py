"""svc's own health endpoints called straight from a raw ASGI callable: no router, no edge.

They send the response headers svc's edge would add (fixed values: a request id, Server-Timing,
the security headers), so against the same-headers raw-ASGI baseline this is the floor for svc's
endpoints; svc's production `/health` over it is what the edge and the router cost. Configured
like svc, from the environment, with svc's lifespan (`uvicorn svc_endpoints:app --app-dir bench`).
"""

from __future__ import annotations

from typing import Any

from baseline import SVC_HEADERS, send_with_headers
from starlette.requests import Request

from svc.app import create_app
from svc.http.routing import Route

_svc = create_app()
_endpoints = {route.path: route.handler for route in _svc.routes if isinstance(route, Route)}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return await _svc(scope, receive, send)
    scope["app"] = _svc
    response = await _endpoints[scope["path"]](Request(scope, receive))
    await send_with_headers(send, response, SVC_HEADERS)
