"""`/metrics`: exact request counts by route template, bounded cardinality, runtime gauges, access, formats."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from svc.app import create_app
from svc.clock import utc_now
from svc.context import UNMATCHED
from svc.db import PoolStats
from svc.metrics import Metrics
from svc.probe import ProbeResult
from svc.schema import SchemaStatus
from svc.settings import Environment, Settings
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


MODES = ("one process", "multiprocess")
PLAIN = "text/plain; version=0.0.4; charset=utf-8"


@dataclasses.dataclass
class Latest:
    """A stand-in for the probe or the schema check: its last result."""

    last: Any = None


@dataclasses.dataclass
class Engine:
    """A stand-in for `svc.db.Database`: its pool's counters."""

    stats: PoolStats

    def pool_stats(self) -> PoolStats:
        return self.stats


@dataclasses.dataclass
class Runtime:
    """A stand-in for the application's runtime, as start-up leaves it before the database is set up."""

    db: Any = None
    probe: Any = None
    schema: Any = None


@pytest.fixture
def make_metrics(tmp_path: Path) -> Callable[[str], Metrics]:
    """`Metrics` in one of `MODES`: a multiprocess run in this test's own directory."""

    def make(mode: str) -> Metrics:
        directory = tmp_path / "metrics" if mode == "multiprocess" else None
        metrics = Metrics(Settings(app_env=Environment.TEST, app_version="1.2.3", metrics_dir=directory))
        assert (metrics.multiprocess_dir is not None) == (mode == "multiprocess")
        return metrics

    return make


def render(metrics: Metrics, runtime: Runtime, accept: str = "") -> Samples:
    body, content_type = metrics.render(runtime, accept)
    assert content_type == PLAIN
    return samples(body.decode())


def probed(status: str, latency_ms: float | None) -> ProbeResult:
    return ProbeResult(status, utc_now(), time.monotonic(), latency_ms)


@pytest.mark.parametrize("mode", MODES)
def test_pool_probe_and_schema_gauges_are_read_at_scrape_time(
    make_metrics: Callable[[str], Metrics], mode: str
) -> None:
    metrics = make_metrics(mode)
    runtime = Runtime(
        db=Engine(PoolStats(size=3, checked_in=2, checked_out=1, overflow=0, max_overflow=2)),
        probe=Latest(probed("fail", None)),
        schema=Latest(SchemaStatus("warn", utc_now(), time.monotonic())),
    )
    failing = render(metrics, runtime)
    runtime.db.stats = PoolStats(size=3, checked_in=0, checked_out=4, overflow=1, max_overflow=2)
    runtime.probe.last = probed("pass", 2.5)
    passing = render(metrics, runtime)

    assert failing[("svc_db_pool_size", frozenset())] == 3
    assert failing[("svc_db_pool_checked_out", frozenset())] == 1
    assert failing[("svc_db_pool_overflow", frozenset())] == 0
    assert math.isnan(failing[("svc_db_probe_latency_seconds", frozenset())])
    assert series(failing, "svc_health_check_status") == {
        ("postgresql:responseTime", "pass"): 0,
        ("postgresql:responseTime", "warn"): 0,
        ("postgresql:responseTime", "fail"): 1,
        ("postgresql:migrations", "pass"): 0,
        ("postgresql:migrations", "warn"): 1,
        ("postgresql:migrations", "fail"): 0,
    }
    assert passing[("svc_db_pool_checked_out", frozenset())] == 4
    assert passing[("svc_db_pool_overflow", frozenset())] == 1
    assert passing[("svc_db_probe_latency_seconds", frozenset())] == pytest.approx(0.0025)
    assert series(passing, "svc_health_check_status")[("postgresql:responseTime", "pass")] == 1


@pytest.mark.parametrize("mode", MODES)
def test_nothing_measured_has_no_sample_until_it_is(make_metrics: Callable[[str], Metrics], mode: str) -> None:
    metrics = make_metrics(mode)
    runtime = Runtime()  # before start-up
    starting = render(metrics, runtime)
    runtime.probe, runtime.schema = Latest(), Latest()  # made, and not run yet
    unprobed = render(metrics, runtime)

    for found in (starting, unprobed):
        assert ("svc_db_probe_latency_seconds", frozenset()) not in found
        assert ("svc_db_pool_size", frozenset()) not in found
        assert not series(found, "svc_health_check_status")
        assert found[("http_requests_in_flight", frozenset())] == 0


def shape(body: bytes) -> dict[str, tuple[str, frozenset[tuple[str, ...]]]]:
    """Each family's type and the label names of its samples."""
    return {
        family.name: (family.type, frozenset(tuple(sorted(s.labels)) for s in family.samples))
        for family in text_string_to_metric_families(body.decode())
    }


def test_one_process_and_a_run_of_workers_show_the_same_families(make_metrics: Callable[[str], Metrics]) -> None:
    runtime = Runtime(probe=Latest(probed("pass", 1.0)), schema=Latest())
    shapes = []
    for mode in MODES:
        metrics = make_metrics(mode)
        metrics.observe("GET", "/items/{item_id}", 200, 0.003)
        shapes.append(shape(metrics.render(runtime, "")[0]))

    one, run = shapes
    assert one == run
    assert one["process_cpu_seconds"] == ("counter", frozenset({()}))
    assert one["process_resident_memory_bytes"] == ("gauge", frozenset({()}))
    assert one["python_gc_collections"] == ("counter", frozenset({("generation",)}))


# prometheus-client compares the version it could not parse with a tuple, and raises.
UNPARSABLE_VERSIONS = (
    "application/openmetrics-text; version=garbage",
    "application/openmetrics-text; version=1.0.0-rc1",
    "text/plain; version=1.0.0-rc1",
)


@pytest.mark.parametrize("accept", UNPARSABLE_VERSIONS)
def test_a_format_version_that_cannot_be_parsed_gets_the_plain_text_format(
    make_metrics: Callable[[str], Metrics], accept: str
) -> None:
    found = render(make_metrics("one process"), Runtime(), accept)
    assert found[("http_requests_in_flight", frozenset())] == 0


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
