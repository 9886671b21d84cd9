"""Request ids, security headers and the access log, on every response."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import httpx
import pytest

from svc.app import create_app
from svc.settings import Environment, Settings
from tests.conftest import serve

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
PATHS = ["/health", "/health/live", "/nope"]


@pytest.mark.parametrize("request_id", ["abc", "trace:1.2-3_4", "A" * 128])
async def test_a_well_formed_inbound_request_id_is_echoed(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize("request_id", ["", "has space", "semi;colon", "A" * 129, "é", "<script>"])
async def test_a_malformed_inbound_request_id_is_replaced(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": request_id.encode()})
    assert GENERATED_ID.match(response.headers["x-request-id"])


async def test_each_request_without_an_id_gets_a_new_one(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED_ID.match(i) for i in ids)


@pytest.mark.parametrize("path", PATHS)
async def test_security_headers_are_on_every_response(client: httpx.AsyncClient, path: str) -> None:
    headers = (await client.get(path)).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in headers


@pytest.mark.parametrize(("app_env", "hsts"), [("test", False), ("development", False), ("production", True)])
async def test_hsts_is_sent_only_when_deployed(
    make_settings: Callable[..., Settings], app_env: str, hsts: bool
) -> None:
    settings = make_settings(app_env=Environment(app_env), secret_key="x" * 8 + "y" * 30)
    async with serve(create_app(settings)) as client:
        headers = (await client.get("/health/live")).headers
    assert ("strict-transport-security" in headers) is hsts


async def test_access_log_is_one_structured_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="svc.access")
    response = await client.get("/nope", headers={"X-Request-ID": "access-1"})
    [record] = [r for r in caplog.records if r.name == "svc.access"]
    fields = {k: getattr(record, k) for k in ("method", "path", "status", "bytes", "request_id")}
    assert fields == {
        "method": "GET",
        "path": "/nope",
        "status": 404,
        "bytes": len(response.content),
        "request_id": "access-1",
    }
    assert 0 <= record.duration_ms < 10_000  # type: ignore[attr-defined]


async def test_access_log_can_be_switched_off(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="svc.access")
    async with serve(create_app(make_settings(access_log=False))) as client:
        await client.get("/health/live")
    assert [r for r in caplog.records if r.name == "svc.access"] == []


def test_uvicorn_access_log_is_replaced_by_ours(client: httpx.AsyncClient) -> None:
    assert logging.getLogger("uvicorn.access").disabled
