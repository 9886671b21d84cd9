"""`/metrics` under `uvicorn --workers 2`: totals over workers, dead workers' gauges removed, a fresh start per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, UvicornProcess, scrubbed_environ, wait_for_workers
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
    wait_for_workers(server, 2)  # answering proves one worker up; both must be before they can share the requests
    [run_dir] = base.iterdir()

    # Requests on new connections until both workers have recorded some (each writes its own file).
    sent = 0
    deadline = time.monotonic() + 20
    while len(list(run_dir.glob("histogram_*.db"))) < 2:
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        sent += 1
        assert time.monotonic() < deadline, f"one worker answered all {sent} requests"
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
    # Single-process metrics: one worker's own, its process gauges not labelled by pid.
    assert ("process_resident_memory_bytes", frozenset()) in found
    assert server.output().count("metrics are this process's only, not summed over workers") == 2
    assert server.stop() == 0
    assert "Traceback" not in server.output()


# The worker's last publication runs after the engine was closed; here reading the pool fails then.
LAST_PUBLICATION = """
import asyncio, json, sys, types
from pathlib import Path
from svc.logging import configure_logging
from svc.metrics import Metrics
from svc.settings import Environment, Settings


class ClosedEngine:
    def pool_stats(self):
        raise RuntimeError("the engine is closed")


async def main():
    configure_logging("INFO", "json")
    metrics = Metrics(Settings(app_env=Environment.TEST, metrics_dir=Path(sys.argv[1])))
    state = types.SimpleNamespace(db=None, probe=None, schema=None)
    async with metrics.running(state):
        await asyncio.sleep(0.1)  # the first publication
        before = sorted(path.name for path in metrics.multiprocess_dir.glob("gauge_live*.db"))
        state.db = ClosedEngine()
    after = sorted(path.name for path in metrics.multiprocess_dir.glob("gauge_live*.db"))
    print(json.dumps({"before": before, "after": after}))


asyncio.run(main())
"""


def test_a_failed_last_publication_is_a_warning_and_the_workers_gauges_still_leave(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LAST_PUBLICATION, str(tmp_path / "metrics")],
        env={**scrubbed_environ(), "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)
    assert files["before"], "the worker published no live gauges to remove"
    assert files["after"] == []
    [warning] = [json.loads(line) for line in result.stderr.splitlines() if "last metrics" in line]
    assert warning["level"] == "WARNING"
    assert warning["message"] == "Publishing this worker's last metrics failed: RuntimeError('the engine is closed')"
    assert "Traceback" not in result.stderr
