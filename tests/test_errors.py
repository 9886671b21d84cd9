"""Every error is RFC 9457 problem+json, rendered in one place, with nothing leaked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from svc.app import create_app
from svc.errors import BadRequest, ServiceError
from svc.settings import Settings
from tests.conftest import serve

LEAKY_TEXT = "internal-detail-that-must-not-leak"


class TeapotError(ServiceError):
    status, title, type, detail = 418, "I'm a teapot", "https://example.invalid/problems/teapot", "Short and stout."


async def boom(request: Request) -> Response:
    raise RuntimeError(LEAKY_TEXT)


async def bad(request: Request) -> Response:
    raise BadRequest("The 'limit' parameter must be a positive integer.")


async def teapot(request: Request) -> Response:
    raise TeapotError(headers={"Retry-After": "5"})


async def echo(request: Request) -> Response:
    return Response(str(len(await request.body())))


@pytest.fixture
async def error_client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    routes = [
        Route("/boom", boom),
        Route("/bad", bad),
        Route("/teapot", teapot),
        Route("/echo", echo, methods=["POST"]),
    ]
    app = create_app(make_settings(max_body_bytes=1024), routes=routes)
    async with serve(app) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, title: str, path: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail", "instance", "requestId"}
    assert body["status"] == status
    assert body["title"] == title
    assert body["instance"] == path
    assert body["requestId"] == response.headers["x-request-id"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


async def test_unknown_path_is_404_problem(error_client: httpx.AsyncClient) -> None:
    body = assert_problem(await error_client.get("/no/such/thing"), 404, "Not Found", "/no/such/thing")
    assert body["type"] == "about:blank"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405_problem_with_allow(error_client: httpx.AsyncClient, method: str) -> None:
    response = await error_client.request(method, "/health")
    assert_problem(response, 405, "Method Not Allowed", "/health")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_unhandled_exception_is_generic_500_and_logged_once(
    error_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await error_client.get("/boom")
    body = assert_problem(response, 500, "Internal Server Error", "/boom")
    assert LEAKY_TEXT not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 1
    assert logged[0].request_id == body["requestId"]  # type: ignore[attr-defined]


async def test_typed_service_errors_render_their_own_fields(error_client: httpx.AsyncClient) -> None:
    response = await error_client.get("/teapot")
    body = assert_problem(response, 418, "I'm a teapot", "/teapot")
    assert body["type"] == "https://example.invalid/problems/teapot"
    assert body["detail"] == "Short and stout."
    assert response.headers["retry-after"] == "5"


async def test_bad_request_carries_its_detail(error_client: httpx.AsyncClient) -> None:
    body = assert_problem(await error_client.get("/bad"), 400, "Bad Request", "/bad")
    assert body["detail"] == "The 'limit' parameter must be a positive integer."


async def test_body_larger_than_the_limit_is_413_problem(error_client: httpx.AsyncClient) -> None:
    assert (await error_client.post("/echo", content=b"x" * 1024)).text == "1024"
    response = await error_client.post("/echo", content=b"x" * 1025)
    assert_problem(response, 413, "Content Too Large", "/echo")


async def test_streamed_body_larger_than_the_limit_is_413_problem(error_client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 512

    response = await error_client.post("/echo", content=chunks())
    assert_problem(response, 413, "Content Too Large", "/echo")


@pytest.mark.parametrize("path", ["/boom", "/bad", "/nope"])
async def test_error_responses_carry_request_id_and_security_headers(
    error_client: httpx.AsyncClient, path: str
) -> None:
    response = await error_client.get(path, headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    assert response.json()["requestId"] == "trace-123"
    assert response.headers["x-content-type-options"] == "nosniff"
