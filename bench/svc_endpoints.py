"""svc's own health endpoints called straight from a raw ASGI callable: no Starlette, no svc middleware.

They send the response headers svc's edge would add (a fixed request id, the security headers),
so against the same-headers raw-ASGI baseline this is the floor for svc's endpoints; svc's
production `/health` over it is what Starlette and svc's edge (request ids, metrics, the
last-resort 500) cost. Configured like svc, from the environment, with svc's lifespan
(`uvicorn svc_endpoints:app --app-dir bench`).
"""

from __future__ import annotations

from typing import Any

from baseline import SVC_HEADERS
from starlette.routing import Route

from svc.app import create_app
from svc.middleware import DirectEndpoint

_svc = create_app()
_endpoints = {r.path: r.app for r in _svc.routes if isinstance(r, Route) and isinstance(r.app, DirectEndpoint)}
# What svc's edge adds; the endpoints send their own Server-Timing.
_EDGE_HEADERS = [header for header in SVC_HEADERS if header[0] != b"server-timing"]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return await _svc(scope, receive, send)
    scope["app"] = _svc
    await _endpoints[scope["path"]].respond(scope, send, _EDGE_HEADERS)
