"""`/metrics` under `uvicorn --workers 2`: totals over workers, dead workers' gauges removed, a fresh start per run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import UvicornProcess
from tests.test_metrics import Samples, samples, series

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL_SIZE = 3
# Waiting for start-up on another route than the one counted: a request that timed out while the
# workers started may still be answered (and counted) later.
STARTED = "/health"


def scrape(server: UvicornProcess) -> Samples:
    # A new connection each time, so the workers take turns answering.
    response = httpx.get(server.base_url + "/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return samples(response.text)


def pids(found: Samples) -> set[int]:
    """The workers that publish process metrics (multiprocess mode labels them by pid)."""
    return {int(dict(labels)["pid"]) for name, labels in found if name == "process_start_time_seconds"}


def eventually(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def live_total(found: Samples) -> float:
    return series(found, "http_requests_total").get(("GET", "/health/live", "200"), 0.0)


def test_two_workers_report_summed_totals_and_a_killed_workers_gauges_leave(
    uvicorn: Callable[..., UvicornProcess], tmp_path: Path
) -> None:
    base = tmp_path / "metrics"
    server = uvicorn("--workers", "2", wait=False, METRICS_DIR=str(base), DB_POOL_SIZE=str(POOL_SIZE))
    server.wait_ready(STARTED)
    [run_dir] = base.iterdir()

    # Requests on new connections until both workers have recorded some (each writes its own file).
    sent = 0
    while len(list(run_dir.glob("histogram_*.db"))) < 2:
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        sent += 1
        assert sent < 1000, "one worker answered everything"
    for _ in range(10):
        assert httpx.get(server.base_url + "/health/live").status_code == 200
    sent += 10

    last: Samples = {}

    def settled(expected_pool: int, excluded: frozenset[int] = frozenset()) -> bool:
        nonlocal last
        last = scrape(server)
        workers = pids(last)
        return (
            live_total(last) == sent
            and last.get(("svc_db_pool_size", frozenset())) == expected_pool
            and len(workers) == 2
            and not workers & excluded
        )

    eventually(lambda: settled(2 * POOL_SIZE), "the totals of both workers")
    assert live_total(last) == sent
    assert last[("svc_db_pool_size", frozenset())] == 2 * POOL_SIZE
    workers = pids(last)
    assert len(workers) == 2

    # uvicorn replaces a killed worker; its counts stay in the totals, its gauges leave with it.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: settled(2 * POOL_SIZE, frozenset({victim})), "the replacement worker, without the killed one's gauges"
    )
    assert live_total(last) == sent
    assert not list(run_dir.glob(f"gauge_live*_{victim}.db"))
    assert list(run_dir.glob(f"histogram_{victim}.db"))


def test_a_new_server_starts_from_zero_and_removes_the_previous_runs_files(
    uvicorn: Callable[..., UvicornProcess], tmp_path: Path
) -> None:
    base = tmp_path / "metrics"
    first = uvicorn("--workers", "2", wait=False, METRICS_DIR=str(base))
    first.wait_ready(STARTED)
    for _ in range(5):
        assert httpx.get(first.base_url + "/health/live").status_code == 200
    [first_run] = base.iterdir()
    first.stop()

    # One process this time: METRICS_DIR alone turns multiprocess mode on.
    second = uvicorn(wait=False, METRICS_DIR=str(base))
    second.wait_ready(STARTED)
    assert live_total(scrape(second)) == 0
    [second_run] = base.iterdir()
    assert second_run != first_run
