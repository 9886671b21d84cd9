"""Plain Starlette, no middleware: `/health` answers the baseline's body with a `Response` (two headers).

`/health/ready` answers the same, for the benchmark's "is it up" poll.

The issue's "plain Starlette" reference row; the load benchmark measures it against the 3-header
raw-ASGI baseline (`uvicorn plain_starlette:app --app-dir bench`).
"""

from __future__ import annotations

from baseline import HEALTH_BODY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def health(request: Request) -> Response:
    return Response(HEALTH_BODY, media_type="application/health+json")


app = Starlette(routes=[Route("/health", health), Route("/health/ready", health)])
