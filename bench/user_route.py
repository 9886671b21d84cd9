"""svc with one route of a user's own on a static path, the way the README builds one: a msgspec Struct as JSON.

The load benchmark sets its `/hello` beside svc's `/health/live` (`uvicorn user_route:app --app-dir bench`):
the request path is the same for both, so the ratio shows what the route's own work costs.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from svc.app import create_app
from svc.http.responses import Encoded, json_response
from svc.http.routing import Route


class Greeting(msgspec.Struct):
    message: str


async def hello(request: Request) -> Encoded:
    return json_response(Greeting("Hello, World!"))


app = create_app(routes=[Route("/hello", hello)])
