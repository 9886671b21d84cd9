"""The seed's budget under concurrency: 64 keep-alive connections against a real uvicorn (production
flags and configuration) for every health endpoint; p99 must stay under 200 ms.

Bounded: 64 connections x 30 requests x 2 rounds per endpoint, 60 s at most per round; 127.0.0.1 only.
pytest-benchmark records the time of a whole round; latencies and req/s are in `extra_info`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import BUDGET_S, LoadResult, Server, http_load, production_env, svc_server

pytestmark = [pytest.mark.e2e, pytest.mark.benchmark(group="64 connections")]

CONNECTIONS = 64
REQUESTS_PER_CONNECTION = 30
ROUNDS = 2


@pytest.fixture(scope="module")
def servers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """svc as deployed (cached /health/db), and svc with HEALTH_DB_CACHE_TTL=0 (a query per probe)."""
    cwd: Path = tmp_path_factory.mktemp("uvicorn")
    started = {
        "svc": svc_server("svc", production_env(database_url), cwd),
        "svc-ttl0": svc_server("svc-ttl0", production_env(database_url, HEALTH_DB_CACHE_TTL="0"), cwd),
    }
    try:
        for server in started.values():
            server.start()
        for server in started.values():
            server.wait_for("/health/ready")
        yield started
    finally:
        for server in started.values():
            server.stop()


CASES = [
    ("svc", "/health"),
    ("svc", "/health/live"),
    ("svc", "/health/ready"),
    ("svc", "/health/db"),
    ("svc-ttl0", "/health/db"),
    ("svc-ttl0", "/health/ready"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{server}-{path}" for server, path in CASES])
def test_p99_under_budget_with_64_connections(
    benchmark: Any, servers: dict[str, Server], loop: Any, budget_report: Callable[..., None], case: tuple[str, str]
) -> None:
    server, path = case
    port = servers[server].port
    results: list[LoadResult] = []

    def one_round() -> None:
        load = http_load(port, path, connections=CONNECTIONS, requests_per_connection=REQUESTS_PER_CONNECTION)
        results.append(loop.run_until_complete(load))

    # Warm-up (not recorded): every connection's first request, and the server's first burst.
    loop.run_until_complete(http_load(port, path, connections=CONNECTIONS, requests_per_connection=3))
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    combined = LoadResult(
        [t for r in results for t in r.latencies],
        sum((r.statuses for r in results), Counter()),
        sum(r.elapsed for r in results),
    )
    p99 = combined.pct(99)
    benchmark.extra_info.update(connections=CONNECTIONS, **combined.summary(), budget_ms=BUDGET_S * 1000)
    budget_report(
        f"{server} {path} x{CONNECTIONS} conns ({combined.rps:.0f} req/s)", None, p99, max(combined.latencies)
    )
    assert combined.statuses == {200: CONNECTIONS * REQUESTS_PER_CONNECTION * ROUNDS}
    assert p99 < BUDGET_S, (
        f"{server} {path}: p99 {p99 * 1000:.1f} ms under {CONNECTIONS} connections is over the budget"
    )
