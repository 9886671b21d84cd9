"""Multiprocess mode in one test process: workers of one run add up, exited workers' counts stay and their gauges leave."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import svc.metrics
from svc.db import PoolStats
from svc.metrics import Metrics
from svc.metrics.report import Check, Family, Latency, Report, Sample, Series, combine
from svc.settings import Environment, Settings
from tests.test_metrics import Engine, Runtime, Samples, render, series

POOL_SIZE = 3


def worker_runtime() -> Runtime:
    return Runtime(
        db=Engine(PoolStats(size=POOL_SIZE, checked_in=POOL_SIZE, checked_out=0, overflow=0, max_overflow=0))
    )


def worker(base: Path) -> Metrics:
    """A `Metrics` in the run of this process (or, in a spawned child, of its parent) under `base`."""
    metrics = Metrics(Settings(app_env=Environment.TEST, metrics_dir=base))
    assert metrics.multiprocess_dir is not None
    return metrics


def answered(metrics: Metrics, count: int) -> Metrics:
    for _ in range(count):
        metrics.observe("GET", "/items/{item_id}", 200, 0.002)
    return metrics


def publish_and_die(base: Path) -> None:
    """In a spawned worker: answer two requests, publish (a scrape does), then die without a word."""
    metrics = answered(worker(base), 2)
    metrics.in_flight = 1
    render(metrics, worker_runtime())
    os.kill(os.getpid(), signal.SIGKILL)


async def serving(base: Path) -> None:
    """Another worker of this run, still serving, that has published."""
    render(answered(worker(base), 2), worker_runtime())


async def stopped(base: Path) -> None:
    """Another worker of this run that has published, then stopped after its engine was closed."""
    runtime = worker_runtime()
    metrics = answered(worker(base), 1)
    async with metrics.running(runtime):
        render(metrics, runtime)
        metrics.observe("GET", "/items/{item_id}", 200, 0.002)  # counted by its last publication only
        runtime.db = ClosedEngine()


class ClosedEngine:
    def pool_stats(self) -> PoolStats:
        raise RuntimeError("the engine is closed")


async def killed(base: Path) -> None:
    """Another worker of this run, in its own process, that published and was killed."""
    process = multiprocessing.get_context("spawn").Process(target=publish_and_die, args=(base,))
    process.start()
    await asyncio.to_thread(process.join, 30)
    assert process.exitcode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("other", "gauges_stay"),
    [(serving, True), (stopped, False), (killed, False)],
    ids=lambda v: getattr(v, "__name__", v),
)
async def test_a_run_counts_every_workers_requests_and_shows_the_live_workers_gauges(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, other: Callable[[Path], Awaitable[None]], gauges_stay: bool
) -> None:
    base = tmp_path / "metrics"
    scraped = answered(worker(base), 3)
    await other(base)
    found = render(scraped, worker_runtime())

    # The scrape is this worker's three and the other's two, whichever way the other left.
    assert series(found, "http_requests_total") == {("GET", "/items/{item_id}", "200"): 5}
    assert found[("http_request_duration_seconds_bucket", frozenset({*LABELS, ("le", "0.0025")}))] == 5
    assert found[("svc_db_pool_size", frozenset())] == POOL_SIZE * (2 if gauges_stay else 1)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


LABELS = {("method", "GET"), ("route", "/items/{item_id}"), ("status", "200")}


async def test_a_worker_publishes_its_report_every_refresh_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc.metrics, "REFRESH_SECONDS", 0.01)
    base = tmp_path / "metrics"
    scraped, other = worker(base), worker(base)
    async with other.running(worker_runtime()):
        answered(other, 4)
        found: Samples = {}
        for _ in range(200):
            found = render(scraped, Runtime())
            if series(found, "http_requests_total") and found.get(("svc_db_pool_size", frozenset())):
                break
            await asyncio.sleep(0.01)
    assert series(found, "http_requests_total") == {("GET", "/items/{item_id}", "200"): 4}
    assert found[("svc_db_pool_size", frozenset())] == POOL_SIZE


async def test_a_failed_last_publication_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = worker(tmp_path / "metrics")
    async with metrics.running(Runtime()):
        assert metrics.multiprocess_dir is not None
        shutil.rmtree(metrics.multiprocess_dir)
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("Publishing this worker's last metrics failed: FileNotFoundError(")
    assert warning.exc_info is None


def family(name: str, kind: str, value: float) -> Family:
    sample_name = name + "_total" if kind == "counter" else name
    return Family(name, "", kind, [Sample(sample_name, {}, value)])


def report(cpu: float, memory: float, started: float, probed_at: float, status: str) -> Report:
    return Report(
        requests=[Series("GET", "/", 200, [1.0, *[0.0] * 14, 0.0004])],
        families=[
            family("process_cpu_seconds", "counter", cpu),
            family("process_resident_memory_bytes", "gauge", memory),
            family("process_start_time_seconds", "gauge", started),
        ],
        in_flight=1,
        checks={"postgresql:responseTime": Check(status, probed_at)},
        probe_latency=Latency(probed_at / 1000, probed_at),
    )


def test_counts_add_up_over_every_worker_gauges_over_live_ones_and_the_start_is_the_earliest() -> None:
    total = combine(
        [
            (report(cpu=1.0, memory=100.0, started=20.0, probed_at=5.0, status="pass"), True),
            (report(cpu=2.0, memory=200.0, started=30.0, probed_at=7.0, status="warn"), True),
            # An exited worker: the first started, the last to probe.
            (report(cpu=4.0, memory=400.0, started=10.0, probed_at=9.0, status="fail"), False),
        ]
    )
    values = {sample.name: sample.value for family in total.families for sample in family.samples}
    assert values == {
        "process_cpu_seconds_total": 7.0,
        "process_resident_memory_bytes": 300.0,
        "process_start_time_seconds": 10.0,
    }
    [requests] = total.requests
    assert requests.tally[0] == 3
    assert requests.tally[-1] == pytest.approx(0.0012)
    assert total.in_flight == 2
    # The live workers' latest measurement, not the exited one's.
    assert total.checks == {"postgresql:responseTime": Check("warn", 7.0)}
    assert total.probe_latency == Latency(0.007, 7.0)
