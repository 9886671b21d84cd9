"""Every log line written while a request is handled carries that request's id, whoever writes it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from svc.app import create_app
from svc.errors import ServiceUnavailable
from svc.settings import Settings
from tests.conftest import serve

logger = logging.getLogger("svc.test.handler")


async def logs(request: Request) -> Response:
    logger.info("in the handler")
    await asyncio.to_thread(logger.info, "in a worker thread")
    asyncio.get_running_loop().call_soon(logger.info, "in a callback")  # runs in a copy of the request's context
    await asyncio.sleep(0)
    return PlainTextResponse("logged")


async def crashes(request: Request) -> Response:
    logger.info("about to fail")
    raise RuntimeError("boom")


async def unavailable(request: Request) -> Response:
    raise ServiceUnavailable()


ROUTES = [Route("/logs", logs), Route("/crashes", crashes), Route("/unavailable", unavailable)]


@pytest.mark.parametrize(
    ("path", "status", "loggers"),
    [
        ("/logs", 200, {"svc.test.handler", "svc.access"}),
        ("/crashes", 500, {"svc.test.handler", "svc.errors", "svc.access"}),
        ("/unavailable", 503, {"svc.access"}),  # a 503 the service chose is its answer, not an incident
        ("/no/such/path", 404, {"svc.access"}),
    ],
)
async def test_log_lines_written_while_handling_a_request_carry_its_id(
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    path: str,
    status: int,
    loggers: set[str],
) -> None:
    async with serve(create_app(make_settings(), routes=ROUTES)) as client:
        capsys.readouterr()  # start-up lines
        response = await client.get(path, headers={"X-Request-ID": "req-77"})
        err = capsys.readouterr().err
    assert response.status_code == status
    entries: list[dict[str, Any]] = [json.loads(line) for line in err.splitlines()]
    # httpx logs on the client's side, after the response: not part of handling the request.
    server_side = [e for e in entries if e["logger"] != "httpx"]
    assert {e["logger"] for e in server_side} == loggers
    assert [e for e in server_side if e["request_id"] != "req-77"] == []
    if path == "/logs":
        assert [e["message"] for e in server_side if e["logger"] == "svc.test.handler"] == [
            "in the handler",
            "in a worker thread",
            "in a callback",
        ]
