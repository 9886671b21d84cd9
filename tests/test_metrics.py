"""`/metrics`: exact request counts by route template, bounded cardinality, runtime gauges, access, formats."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from svc.app import create_app
from svc.context import UNMATCHED
from svc.settings import Settings
from tests.conftest import ROOT, serve

TOKEN = "metrics-token-0123456789"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(found: Samples, name: str) -> dict[tuple[str, ...], float]:
    """The samples called `name`, keyed by their (method, route, status) labels or sorted label values."""
    out = {}
    for (sample, labels), value in found.items():
        if sample == name:
            d = dict(labels)
            key = (d["method"], d["route"], d["status"]) if "route" in d else tuple(v for _, v in sorted(labels))
            out[key] = value
    return out


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return samples(response.text)


async def item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


async def test_request_counts_are_exact_by_method_route_template_and_status(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(), routes=[Route("/items/{item_id}", item)])
    async with serve(app) as client:
        for _ in range(3):
            assert (await client.get("/health/live")).status_code == 200
        for n in range(2):
            assert (await client.get(f"/items/{n}")).status_code == 200
        assert (await client.post("/health/live")).status_code == 405
        assert (await client.get("/no/such/path")).status_code == 404
        found = await scrape(client)
        again = await scrape(client)

    expected = {
        ("GET", "/health/live", "200"): 3.0,
        ("GET", "/items/{item_id}", "200"): 2.0,
        ("POST", "/health/live", "405"): 1.0,
        ("GET", UNMATCHED, "404"): 1.0,
    }
    assert series(found, "http_requests_total") == expected
    assert series(found, "http_request_duration_seconds_count") == expected
    # A scrape is counted once it has been answered.
    assert series(again, "http_requests_total") == {**expected, ("GET", "/metrics", "200"): 1.0}


async def test_a_thousand_unknown_paths_and_odd_methods_add_one_series_each(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings())) as client:
        before = len(await scrape(client))
        for n in range(1000):
            assert (await client.get(f"/unknown/{n}")).status_code == 404
        for n in range(20):
            await client.request(f"BREW{n}", "/unknown")
        found = await scrape(client)

    totals = series(found, "http_requests_total")
    assert totals[("GET", UNMATCHED, "404")] == 1000
    assert totals[("<other>", UNMATCHED, "404")] == 20
    assert not [key for key in totals if "/unknown" in key[1]]
    # The 1,000 paths became one histogram (buckets, count, sum, created) and one counter series.
    assert len(found) - before < 60


async def test_in_flight_counts_requests_being_answered(make_settings: Callable[..., Settings]) -> None:
    release = asyncio.Event()
    both_arrived = asyncio.Event()
    arrived = 0

    async def wait(request: Request) -> Response:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_arrived.set()
        await release.wait()
        return PlainTextResponse("done")

    async with serve(create_app(make_settings(), routes=[Route("/wait", wait)])) as client:
        waiting = [asyncio.create_task(client.get("/wait")) for _ in range(2)]
        try:
            await asyncio.wait_for(both_arrived.wait(), 5)
            during = await scrape(client)
        finally:
            release.set()
            await asyncio.gather(*waiting)
        after = await scrape(client)

    # The two waiting requests and the scrape itself.
    assert during[("http_requests_in_flight", frozenset())] == 3
    assert after[("http_requests_in_flight", frozenset())] == 1


async def test_pool_probe_and_schema_gauges_are_read_at_scrape_time(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(db_pool_size=3)
    app = create_app(settings)
    async with serve(app) as client:
        assert (await client.get("/health/db")).status_code == 200
        async with app.runtime.db.session() as session:
            await session.execute(text("SELECT 1"))  # a session takes a connection on first use
            held = await scrape(client)
        released = await scrape(client)
        latency_ms = app.runtime.probe.last.latency_ms

    assert held[("svc_db_pool_size", frozenset())] == 3
    assert held[("svc_db_pool_checked_out", frozenset())] == 1
    assert released[("svc_db_pool_checked_out", frozenset())] == 0
    assert released[("svc_db_pool_overflow", frozenset())] == 0
    assert released[("svc_db_probe_latency_seconds", frozenset())] == pytest.approx(latency_ms / 1000)
    status = series(released, "svc_health_check_status")
    assert status == {
        ("postgresql:responseTime", "pass"): 1,
        ("postgresql:responseTime", "warn"): 0,
        ("postgresql:responseTime", "fail"): 0,
        ("postgresql:migrations", "pass"): 1,
        ("postgresql:migrations", "warn"): 0,
        ("postgresql:migrations", "fail"): 0,
    }


async def test_a_failed_probe_shows_as_fail_with_no_latency(
    make_settings: Callable[..., Settings], refused_port: int, database_url: str
) -> None:
    from tests.conftest import with_database

    url = with_database(database_url, "postgres", host="127.0.0.1", port=refused_port)
    async with serve(create_app(make_settings(database_url=url))) as client:
        assert (await client.get("/health/db")).status_code == 503
        found = await scrape(client)
    assert series(found, "svc_health_check_status")[("postgresql:responseTime", "fail")] == 1
    assert math.isnan(found[("svc_db_probe_latency_seconds", frozenset())])


async def test_build_info_and_process_metrics_are_exposed(make_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_settings(app_version="1.2.3"))) as client:
        found = await scrape(client)
    assert found[("svc_build_info", frozenset({("version", "1.2.3"), ("environment", "test")}))] == 1
    assert found[("process_resident_memory_bytes", frozenset())] > 0
    assert any(name == "python_info" for name, _ in found)


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(client: httpx.AsyncClient) -> None:
    await client.get("/health/live")
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(response.text)}
    assert families["http_requests"].type == "counter"
    assert families["svc_build"].type == "info"

    plain = await client.get("/metrics")
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert plain.headers["cache-control"] == "no-store"
    assert "# EOF" not in plain.text


async def test_head_answers_headers_only(client: httpx.AsyncClient) -> None:
    response = await client.head("/metrics")
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize(
    ("mode", "token", "authorization", "status"),
    [
        ("always", None, None, 200),
        ("always", TOKEN, "Bearer wrong-token-wrong-token", 200),
        ("when_authorized", TOKEN, f"Bearer {TOKEN}", 200),
        ("when_authorized", TOKEN, f"bearer {TOKEN}", 200),
        ("when_authorized", TOKEN, None, 401),
        ("when_authorized", TOKEN, "Bearer wrong-token-wrong-token", 401),
        ("when_authorized", TOKEN, f"Basic {TOKEN}", 401),
        ("when_authorized", None, "Bearer anything-at-all-1234", 401),
        ("never", TOKEN, f"Bearer {TOKEN}", 200),
        ("never", TOKEN, None, 401),
    ],
)
async def test_metrics_take_the_health_token_unless_details_are_public(
    make_settings: Callable[..., Settings], mode: str, token: str | None, authorization: str | None, status: int
) -> None:
    settings = make_settings(health_show_details=mode, health_token=token)
    headers = {"Authorization": authorization} if authorization else {}
    async with serve(create_app(settings)) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == status
    assert TOKEN not in response.text
    if status == 401:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith('Bearer realm="metrics"')
        assert ("invalid_token" in response.headers["www-authenticate"]) == (authorization is not None)
        body = json.loads(response.text)
        assert body["status"] == 401
        assert body["instance"] == "/metrics"


async def test_disabled_metrics_are_not_found_and_not_recorded(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(metrics_enabled=False))
    async with serve(app) as client:
        assert (await client.get("/health/live")).status_code == 200
        response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert app.runtime.metrics is None


def test_prometheus_client_is_not_imported_until_the_first_scrape() -> None:
    # It takes ≈50 ms to import: a single process pays that on its first scrape, not at start-up.
    code = (
        "import sys; from svc.app import create_app; from svc.settings import Settings; "
        "create_app(Settings()); print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"
