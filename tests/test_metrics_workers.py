"""`/metrics` of real servers: totals over `--workers 2`, a killed worker's gauges removed, a fresh start per run,
the same families with one worker and two, and any `Accept` header answered."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from svc.metrics.files import read_run
from svc.process import alive
from tests.conftest import UvicornProcess, wait_for_workers
from tests.test_metrics import PLAIN, UNPARSABLE_VERSIONS, Samples, samples, series

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


def worker_pids(run_dir: Path) -> set[int]:
    """The live processes that have a file in the run (each worker names its file after its pid)."""
    found = {int(path.name.split("-", 1)[0]) for path in run_dir.glob("*.report")}
    return {pid for pid in found if alive(pid)}


def counted(run_dir: Path) -> int:
    """How many workers' files count requests to /health/live."""
    return sum(any(series.route == "/health/live" for series in report.requests) for report, _ in read_run(run_dir))


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
    wait_for_workers(server, 2)  # answering proves one worker up; both must be before they can share the requests
    [run_dir] = base.iterdir()

    # Requests on new connections until both workers have recorded (and published) some.
    sent = 0
    deadline = time.monotonic() + 20
    while counted(run_dir) < 2:
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        sent += 1
        assert time.monotonic() < deadline, f"one worker answered all {sent} requests"
    for _ in range(10):
        assert httpx.get(server.base_url + "/health/live").status_code == 200
    sent += 10

    last: Samples = {}

    def settled() -> bool:
        nonlocal last
        last = scrape(server)
        return live_total(last) == sent and last.get(("svc_db_pool_size", frozenset())) == 2 * POOL_SIZE

    eventually(settled, "the totals and pools of both workers")
    workers = worker_pids(run_dir)
    assert len(workers) == 2

    # uvicorn replaces a killed worker; its counts stay in the totals, its gauges leave with it (or the
    # replacement's pool would make three).
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: len(worker_pids(run_dir) - {victim}) == 2, "the replacement worker")
    eventually(settled, "the totals, and the pools of the two live workers")
    assert victim not in worker_pids(run_dir)


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
    wait_for_workers(second, 1)
    assert live_total(scrape(second)) == 0
    [second_run] = base.iterdir()
    assert second_run != first_run


def test_an_unusable_metrics_directory_leaves_each_worker_serving_its_own_metrics(
    uvicorn: Callable[..., UvicornProcess], tmp_path: Path
) -> None:
    # A read-only filesystem fails the same way: a worker that crashed on it would be replaced, and crash, forever.
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    server = uvicorn("--workers", "2", wait=False, METRICS_DIR=str(not_a_directory / "metrics"))
    server.wait_ready(STARTED)
    wait_for_workers(server, 2)

    assert httpx.get(server.base_url + "/health/live").status_code == 200
    found = scrape(server)
    # Single-process metrics: one worker's own.
    assert ("process_resident_memory_bytes", frozenset()) in found
    assert server.output().count("metrics are this process's only, not summed over workers") == 2
    assert server.stop() == 0
    assert "Traceback" not in server.output()


def families(server: UvicornProcess) -> dict[str, str]:
    response = httpx.get(server.base_url + "/metrics", timeout=5)
    assert response.status_code == 200, response.text
    found = list(text_string_to_metric_families(response.text))
    assert not [s for family in found for s in family.samples if "pid" in s.labels]
    return {family.name: family.type for family in found}


def test_one_worker_and_two_show_the_same_families(uvicorn: Callable[..., UvicornProcess], tmp_path: Path) -> None:
    one = uvicorn(wait=False)
    two = uvicorn("--workers", "2", wait=False, METRICS_DIR=str(tmp_path / "metrics"))
    for server, workers in ((one, 1), (two, 2)):
        server.wait_ready(STARTED)
        wait_for_workers(server, workers)

    shown = families(one)
    assert families(two) == shown
    assert shown["process_cpu_seconds"] == "counter"
    assert shown["process_start_time_seconds"] == "gauge"


def test_a_scrape_asking_for_a_format_version_that_cannot_be_parsed_gets_plain_text(
    uvicorn: Callable[..., UvicornProcess],
) -> None:
    server = uvicorn()
    wait_for_workers(server, 1)
    for accept in UNPARSABLE_VERSIONS:
        response = httpx.get(server.base_url + "/metrics", headers={"Accept": accept}, timeout=5)
        assert response.status_code == 200, accept
        assert response.headers["content-type"] == PLAIN
        assert ("http_requests_in_flight", frozenset()) in samples(response.text)
    assert server.stop() == 0
    assert "Traceback" not in server.output()
