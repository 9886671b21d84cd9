"""Contract of the health endpoints: /health, /health/live, /health/ready, /health/db."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib.metadata import version

import httpx
import pytest

HEALTH_ENDPOINTS = ["/health", "/health/live", "/health/ready", "/health/db"]
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def parse_time(value: str) -> datetime:
    assert RFC3339_UTC.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.parametrize("path", HEALTH_ENDPOINTS)
async def test_health_endpoints_answer_health_json_that_is_never_cached(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["status"] == "pass"


@pytest.mark.parametrize("path", HEALTH_ENDPOINTS)
async def test_head_has_the_status_and_headers_of_get_and_no_body(client: httpx.AsyncClient, path: str) -> None:
    get = await client.get(path)
    head = await client.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["cache-control"] == "no-store"
    assert int(head.headers["content-length"]) > 0


async def test_health_follows_the_ietf_draft_layout(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    body = (await client.get("/health")).json()
    assert body["status"] == "pass"
    assert body["serviceId"] == "svc"
    assert body["releaseId"] == version("svc")
    assert body["version"] == version("svc").split(".")[0]
    assert body["environment"] == "test"
    assert isinstance(body["description"], str)
    [uptime] = body["checks"]["uptime"]
    assert uptime["componentType"] == "system"
    assert uptime["observedUnit"] == "s"
    assert uptime["status"] == "pass"
    assert 0 <= uptime["observedValue"] < 60
    assert parse_time(uptime["time"]) >= before.replace(microsecond=before.microsecond // 1000 * 1000)


async def test_uptime_grows_between_requests(client: httpx.AsyncClient) -> None:
    first = (await client.get("/health")).json()["checks"]["uptime"][0]["observedValue"]
    second = (await client.get("/health")).json()["checks"]["uptime"][0]["observedValue"]
    assert second >= first


async def test_liveness_is_exactly_pass(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.content == b'{"status":"pass"}'


# --- Server-Timing (issue 7) ------------------------------------------------------------------------------------------

SERVER_TIMING = re.compile(r"^app;dur=(\d+\.\d{3})(?:, db;dur=(\d+\.\d{3}))?$")


def timings(response: httpx.Response) -> tuple[float, float | None]:
    """`app;dur` and `db;dur` (None when absent) of a response's Server-Timing header, in ms."""
    match = SERVER_TIMING.match(response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    return float(match[1]), None if match[2] is None else float(match[2])


@pytest.mark.parametrize("path", HEALTH_ENDPOINTS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_health_responses_say_how_long_the_app_took(client: httpx.AsyncClient, path: str, method: str) -> None:
    response = await client.request(method, path)
    app_ms, _ = timings(response)
    assert 0 <= app_ms < 10_000


async def test_liveness_timing_has_no_database_part(client: httpx.AsyncClient) -> None:
    assert timings(await client.get("/health/live"))[1] is None


async def test_db_timing_is_the_probe_latency_the_body_reports(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/db")
    [latency] = response.json()["checks"]["postgresql:responseTime"]
    _, db_ms = timings(response)
    assert db_ms == pytest.approx(latency["observedValue"], abs=0.0005)
    # Readiness consults the same (cached) check; /health reports the last one.
    assert timings(await client.get("/health/ready"))[1] == db_ms
    assert timings(await client.get("/health"))[1] == db_ms


async def test_health_has_no_db_timing_before_the_first_database_check(client: httpx.AsyncClient) -> None:
    assert timings(await client.get("/health"))[1] is None
